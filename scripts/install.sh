#!/usr/bin/env bash
# Installs everything ATE needs on a Debian/Ubuntu machine: system packages,
# a virtual environment in .venv and the project in editable mode.
# Idempotent: a second run only checks, and takes a few seconds.
#   scripts/install.sh          runtime
#   scripts/install.sh --test   runtime and test tools
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[ "${1:-}" = "--test" ] && extras="[test]"

# System packages: ffmpeg (decoding m4a/mp3, stem export), rubberband-cli
# (pyrubberband, the reference stretcher), PortAudio and JACK (sounddevice,
# python-rtmidi; tests run JACK's dummy backend), libsndfile (soundfile),
# FFTW (the keylock vocoder's transforms in the realtime engine).
apt_packages=(ffmpeg rubberband-cli sox libsndfile1 libportaudio2 jackd2 libjack-jackd2-0 libfftw3-double3 python3-venv)
missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    echo "install: apt packages ${missing[*]}"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install -q --disable-pip-version-check)
# Mirrors without a package folder print a warning per package; only errors matter.
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }

# Re-install Python packages only when pyproject.toml or this script changed.
stamp=".venv/.ate-installed$extras"
want=$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    # torch first, pinned: a bare requirement pulls several GB of CUDA wheels
    # on machines where only the CPU build is wanted.
    quiet "${pip[@]}" "torch==2.13.0"
    quiet "${pip[@]}" -e ".$extras"
    quiet "${pip[@]}" --no-deps "basic-pitch==0.4.0"
    echo "$want" > "$stamp"
fi
