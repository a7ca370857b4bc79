"""Example study specs (packaged as harness_ext.specs, for `harness-ext demo`)."""
