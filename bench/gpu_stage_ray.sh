#!/usr/bin/env bash
# Build, on this (CPU) machine, a Ray that fits one GPU call: `.raywhl/` at the repository root
# (git-ignored) with Ray's wheel for the GPU image's Python 3.12 and the wheels it depends on.
# Ray's wheel is ~79 MB, over the 64 MiB that one call carries beside the tree; 31 MB of it is the
# Java worker jar and 2 MB the dashboard's web client, which a Python-only cluster without a dashboard
# never loads, so they are dropped (and their lines removed from the wheel's RECORD): ~46 MB in all.
# Carry ".raywhl" in the call after the one that carried ".whl" (bench/gpu_setup.sh) and begin it with
#   python3 -m pip install -q --no-index --find-links .raywhl --break-system-packages ray
# which installs only what the image lacks.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
ver=${RAY_VERSION:-2.60.0}
excl=$(git rev-parse --git-path info/exclude); mkdir -p "$(dirname "$excl")"
grep -qx "/.raywhl/" "$excl" 2>/dev/null || echo "/.raywhl/" >> "$excl"
tmp=$(mktemp -d)
python3 -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d "$tmp" "ray==$ver"
rm -rf .raywhl && mkdir .raywhl
for f in "$tmp"/*.whl; do case $(basename "$f") in ray-*) ;; *) cp "$f" .raywhl/ ;; esac; done
python3 - "$tmp"/ray-*.whl .raywhl <<'PY'
import sys, zipfile, pathlib
src, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
drop = lambda n: n.startswith("ray/jars/") or n.startswith("ray/dashboard/client/build/")
with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dest / src.name, "w", zipfile.ZIP_DEFLATED) as zo:
    for info in zi.infolist():
        if drop(info.filename):
            continue
        data = zi.read(info)
        if info.filename.endswith(".dist-info/RECORD"):
            data = "".join(l + "\n" for l in data.decode().splitlines() if not drop(l.split(",")[0])).encode()
        zo.writestr(info, data)
PY
rm -rf "$tmp"
du -sh .raywhl
