#!/usr/bin/env bash
# A packaged bundle (monai-ext package) runs with plain MONAI and the requirements in its metadata, no monai_ext.
#   bash scripts/check_packaged.sh BUNDLE.zip [WORK_DIR]
# 1. unzips BUNDLE.zip into WORK_DIR (default: a new temporary folder);
# 2. creates a plain venv there (python3 -m venv, no system site-packages), installs torch==2.13.0 first (this
#    machine's wheel; TORCH_SPEC overrides), then the zoo's requirement lines from the packaged metadata, as the
#    model zoo's ci/get_bundle_requirements.py writes them: monai==<monai_version>, numpy==<numpy_version> and
#    each required_packages_version entry (MONAI_SPEC overrides the monai line, e.g. MONAI_SPEC=monai==1.6.1);
# 3. checks that monai_ext does not import there;
# 4. writes a synthetic input of the metadata's image shape (PNG or NIfTI, by data_type) and runs
#    python -m monai.bundle run --config_file configs/inference.yaml on it, in the bundle folder;
# 5. runs MONAI's verify_metadata, verify_net_in_out and ckpt_export on the bundle (monai_ext/bundle/zoo_check.py,
#    a plain script) in that venv (plus jsonschema, which verify_metadata needs), and, when they exist, in
#    .venv-label (MONAI 1.5.2) and .venv (this project's), each with monai_ext forbidden;
# 6. resolves the same requirements for Python 3.10 and 3.12 (pip install --dry-run --python-version, binary
#    wheels only): installable on each, nothing installed.
# Prints one line per step; exits non-zero at the first failure. Needs PyPI (or a mirror) for step 2 and 6.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
zip="$(realpath "${1:?usage: bash scripts/check_packaged.sh BUNDLE.zip [WORK_DIR]}")"
work="${2:-$(mktemp -d /tmp/check_packaged.XXXXXX)}"
mkdir -p "$work"
work="$(realpath "$work")"
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
schema="$here/monai_ext/bundle/meta_schema_20240725.json"
zoo_check="$work/zoo_check.py"  # a copy: run from the checkout, its folder would be on sys.path
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
start=$(date +%s)
step() { echo "[check_packaged $(( $(date +%s) - start ))s] $*"; }

rm -rf "$work/unzipped" && mkdir -p "$work/unzipped"
cp "$here/monai_ext/bundle/zoo_check.py" "$zoo_check"
"$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$zip" "$work/unzipped"
bundle="$(find "$work/unzipped" -mindepth 1 -maxdepth 1 -type d | head -n 1)"
step "unzipped $(basename "$bundle") into $bundle"

# the zoo's requirement lines from the packaged metadata
"$PY" - "$bundle/configs/metadata.json" "${MONAI_SPEC:-}" > "$work/requirements.txt" <<'EOF'
import json, sys
meta = json.load(open(sys.argv[1]))
print(sys.argv[2] or f"monai=={meta['monai_version']}")
if "numpy_version" in meta:
    print(f"numpy=={meta['numpy_version']}")
for name, version in meta.get("required_packages_version", {}).items():
    version = version.strip()
    print(f"{name}{version}" if version[0] in "<>=" else f"{name}=={version}")
EOF
step "requirements: $(tr '\n' ' ' < "$work/requirements.txt")"

venv="$work/venv"
if [ ! -x "$venv/bin/python" ]; then
    "$PY" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q "$TORCH_SPEC"
"$venv/bin/python" -m pip install -q -r "$work/requirements.txt"
step "venv ready: $("$venv/bin/python" -c 'import sys, torch, monai, numpy; print("python", sys.version.split()[0], "torch", torch.__version__, "monai", monai.__version__, "numpy", numpy.__version__)')"
if (cd "$work" && "$venv/bin/python" -c "import monai_ext" 2>/dev/null); then
    echo "monai_ext imports in the fresh venv: the check would prove nothing" >&2
    exit 1
fi
step "monai_ext is not importable in the venv"

# a synthetic input of the metadata's image shape
"$venv/bin/python" - "$bundle/configs/metadata.json" "$work/input" > "$work/input_files.json" <<'EOF'
import json, sys
from pathlib import Path
import numpy as np
meta = json.load(open(sys.argv[1]))
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
info = meta["network_data_format"]["inputs"]["image"]
shape = [s if isinstance(s, int) else 64 for s in info["spatial_shape"]]
channels = int(info["num_channels"])
rng = np.random.default_rng(0)
if meta.get("data_type") == "png" or len(shape) == 2:
    from PIL import Image
    size = [int(s * 1.5) for s in shape[:2]]  # another size than the network's: the preprocessing resizes
    arr = (rng.random((*size, channels)) * 255).astype(np.uint8)
    path = out / "synthetic.png"
    Image.fromarray(arr[..., 0] if channels == 1 else arr).save(path)
else:
    import nibabel as nib
    arr = (rng.random(shape) * 1000).astype(np.float32)
    path = out / "synthetic.nii.gz"
    nib.save(nib.Nifti1Image(arr, np.diag([1.5, 1.5, 2.0, 1.0])), str(path))
print(json.dumps([str(path)]))
EOF
rm -rf "$work/output"
(cd "$bundle" && "$venv/bin/python" -m monai.bundle run --config_file configs/inference.yaml \
    --input_files "$(cat "$work/input_files.json")" --output_dir "$work/output" > "$work/inference.log" 2>&1) || {
    tail -n 30 "$work/inference.log" >&2; exit 1; }
written=$(find "$work/output" -type f | wc -l)
if [ "$written" -eq 0 ]; then echo "inference wrote nothing into $work/output" >&2; exit 1; fi
step "inference.yaml ran in the fresh venv: $written file(s) in $work/output ($(cd "$work/output" && find . -type f | sort | tr '\n' ' '))"

# MONAI's verify_metadata validates with jsonschema, a tool of the check (the zoo's CI has it), not of the bundle:
# installed only now, after the run above proved the bundle's own requirements enough
"$venv/bin/python" -m pip install -q jsonschema
for env in "$venv" "$here/.venv-label" "$here/.venv"; do
    [ -x "$env/bin/python" ] || { step "no $env: skipped"; continue; }
    (cd "$bundle" && "$env/bin/python" "$zoo_check" . --schema "$schema" --forbid monai_ext > "$work/zoo_check.json" \
        2> "$work/zoo_check.log") || { tail -n 30 "$work/zoo_check.log" >&2; exit 1; }
    step "verify_metadata, verify_net_in_out, ckpt_export pass with $env: $(tail -n 1 "$work/zoo_check.json")"
done

# PyPI only (its index carries each file's Requires-Python; a local mirror may not), every manylinux tag of x86_64
# (pip matches tags literally: the legacy names manylinux1 / 2010 / 2014 are listed besides manylinux_2_x)
platforms=(--platform linux_x86_64 --platform manylinux1_x86_64 --platform manylinux2010_x86_64
           --platform manylinux2014_x86_64)
for v in 5 12 17 18 19 20 21 22 23 24 25 26 27 28; do platforms+=(--platform "manylinux_2_${v}_x86_64"); done
for pyver in 3.10 3.12; do
    env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null "$venv/bin/python" -m pip install -q --dry-run --ignore-installed \
        --only-binary=:all: --python-version "$pyver" "${platforms[@]}" --target "$work/dry_$pyver" "$TORCH_SPEC" \
        -r "$work/requirements.txt" --report "$work/resolve_$pyver.json"
    summary=$("$venv/bin/python" - "$work/resolve_$pyver.json" "$pyver" <<'EOF2'
import json, sys
from packaging.specifiers import SpecifierSet
found = json.load(open(sys.argv[1]))["install"]
bad = [i["metadata"]["name"] for i in found
       if not SpecifierSet(i["metadata"].get("requires_python") or "").contains(sys.argv[2])]
if bad:
    sys.exit(f"resolved releases that exclude Python {sys.argv[2]}: {bad}")
names = ("monai", "numpy", "pillow", "scipy", "scikit-image", "matplotlib", "tifffile", "pydicom")
print(len(found), "distributions, each admitting it; e.g.",
      ", ".join(f"{i['metadata']['name']}=={i['metadata']['version']}" for i in found
                if i["metadata"]["name"].lower() in names))
EOF2
)
    step "installable on Python $pyver: $summary"
done
step "all checks passed for $(basename "$zip")"
