"""The report templates (packaged as harness_ext.templates)."""
