# Sourced by the entry scripts: installs what the build and the tests need on Debian.
# OpenBLAS (LAPACK for ndarray-linalg) from Debian; numpy for the tests that load .npy files.

need_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo not found; install Rust (https://rustup.rs) and rerun" >&2
    exit 1
fi

if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
    echo "installing libopenblas-dev (LAPACK/BLAS for ndarray-linalg)..." >&2
    need_root apt-get update -qq
    need_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libopenblas-dev >/dev/null
fi

ensure_numpy() {
    if ! python3 -c "import numpy" >/dev/null 2>&1; then
        echo "installing numpy (tests load every written .npy with numpy)..." >&2
        python3 -m pip install --quiet numpy
    fi
}
