#!/usr/bin/env bash
# aarch64 smoke check: edgecut installed with pip from the package registry's aarch64 wheels
# into a Debian arm64 root, run under qemu user-mode emulation:
#   1. debootstrap a minimal arm64 Debian (python3, venv) in a scratch folder;
#   2. build edgecut's wheel here and `pip install 'edgecut[cpu]'` inside the root, so
#      every dependency comes as the registry's aarch64 wheel;
#   3. `edgecut devices`, `edgecut run` on a zoo model, `edgecut doctor`, and an agent
#      start, status query over its API, and stop (SIGTERM), all emulated.
# Installs what it needs from Debian (debootstrap, qemu-user-static, binfmt-support) and
# registers the aarch64 binfmt handler when it is missing; needs root. Prints the time of
# each step. Keeps nothing between runs: the scratch folder is removed at the end
# (ARM64_KEEP=1 keeps it for a look; ARM64_BASE=<kept root> starts from a copy of one
# instead of debootstrapping). ARM64_SUITE picks the Debian release (bookworm:
# Python 3.11); ARM64_MIRROR the Debian mirror (default: this machine's apt source).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
SUITE=${ARM64_SUITE:-bookworm}
T0=$(date +%s)
step() { echo "arm64-smoke: [$(( $(date +%s) - T0 ))s] $*"; }

if [ "$(id -u)" -ne 0 ]; then
  echo "arm64-smoke: needs root (debootstrap, chroot, binfmt_misc)" >&2
  exit 1
fi

need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -x /usr/bin/qemu-aarch64-static ] || need+=(qemu-user-static)
command -v update-binfmts >/dev/null 2>&1 || need+=(binfmt-support)
if [ ${#need[@]} -gt 0 ]; then
  step "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# qemu runs aarch64 binaries through binfmt_misc; the F flag (fix binary) lets the handler
# work inside a chroot, where /usr/bin/qemu-aarch64-static is not visible.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 || update-binfmts --import qemu-aarch64
fi
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || {
  echo "arm64-smoke: the qemu-aarch64 binfmt handler is not enabled" >&2
  exit 1
}

MIRROR=${ARM64_MIRROR:-}
if [ -z "$MIRROR" ]; then
  # The first Debian archive this machine's apt uses (not the security archive).
  MIRROR=$(grep -hoE '(https?://[^ ]+/debian)/?( |$)' /etc/apt/sources.list \
             /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
           | head -n1 | tr -d ' ' || true)
fi
if [ -z "$MIRROR" ]; then
  echo "arm64-smoke: no Debian mirror found in /etc/apt; set ARM64_MIRROR" >&2
  exit 1
fi

WORK=$(mktemp -d /var/tmp/edgecut-arm64.XXXXXX)
ROOT=$WORK/root
MOUNTS=()
cleanup() {
  local rc=$?
  for ((i=${#MOUNTS[@]}-1; i>=0; i--)); do umount -l "${MOUNTS[$i]}" 2>/dev/null || true; done
  if [ "${ARM64_KEEP:-0}" = 1 ]; then
    echo "arm64-smoke: kept $WORK"
  else
    rm -rf "$WORK"
  fi
  exit $rc
}
trap cleanup EXIT

if [ -n "${ARM64_BASE:-}" ]; then
  # For working on this script: a copy of a root an earlier run kept (ARM64_KEEP=1).
  step "copying the arm64 root $ARM64_BASE"
  cp -a "$ARM64_BASE" "$ROOT"
else
  step "debootstrap $SUITE arm64 (second stage emulated)"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 || {
      tail -n 30 "$WORK/debootstrap.log" >&2
      exit 1
    }
fi
step "root ready: $(chroot "$ROOT" /usr/bin/uname -m), $(chroot "$ROOT" /usr/bin/python3 --version)"

step "building edgecut's wheel"
PY=${PYTHON:-python3}
[ -x "$REPO/.venv/bin/python" ] && PY="$REPO/.venv/bin/python"
"$PY" -m pip wheel -q --no-deps -w "$WORK/dist" "$REPO" >/dev/null
WHEEL=$(basename "$(ls "$WORK"/dist/edgecut-*.whl)")
mkdir -p "$ROOT/tmp/dist"
cp "$WORK/dist/$WHEEL" "$ROOT/tmp/dist/"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# This machine's trust store: where HTTPS goes through a proxy with its own CA, Debian's
# bundle in the fresh root would refuse the registry's certificate.
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/host-ca-certificates.crt"

for fs in proc sys dev; do
  mount --bind "/$fs" "$ROOT/$fs"
  MOUNTS+=("$ROOT/$fs")
done
# qemu-user shows the emulated programs this host's /proc/cpuinfo, an x86 one; ONNX
# Runtime's CPU detection (the cpuinfo library) reads it and crashes on import. Give the
# root the /proc/cpuinfo of the CPU being emulated: ARMv8.0 cores (Cortex-A72), one per
# host core.
for ((i = 0; i < $(nproc); i++)); do
  printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' "$i"
done > "$WORK/cpuinfo"
mount --bind "$WORK/cpuinfo" "$ROOT/proc/cpuinfo"
MOUNTS+=("$ROOT/proc/cpuinfo")

# Run a command in the arm64 root with a clean environment (the host's pip settings name
# folders that do not exist there); proxies pass through.
in_root() {
  local envs=(HOME=/root PATH=/opt/edgecut/bin:/usr/bin:/bin LANG=C.UTF-8
              PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180
              PIP_CERT=/etc/ssl/certs/host-ca-certificates.crt
              SSL_CERT_FILE=/etc/ssl/certs/host-ca-certificates.crt)
  for v in http_proxy https_proxy HTTP_PROXY HTTPS_PROXY no_proxy NO_PROXY; do
    [ -n "${!v:-}" ] && envs+=("$v=${!v}")
  done
  chroot "$ROOT" /usr/bin/env -i "${envs[@]}" /bin/bash -c "$1"
}

step "pip install $WHEEL[cpu] from the registry's aarch64 wheels"
in_root "python3 -m venv /opt/edgecut && pip install -q /tmp/dist/$WHEEL'[cpu]'"
in_root "pip list 2>/dev/null | grep -iE '^(edgecut|numpy|onnx|onnxruntime|ai-edge-litert|tflite-runtime) '"
in_root "python3 -c 'import platform, onnxruntime; print(\"machine\", platform.machine(), \"onnxruntime\", onnxruntime.__version__, onnxruntime.get_available_providers())'"

step "edgecut devices"
in_root "edgecut devices"

step "edgecut run on a zoo model (squeezenet)"
in_root 'edgecut run "$(edgecut zoo path squeezenet)" --repeat 2'

step "edgecut doctor"
in_root "edgecut doctor"

step "agent start, status, stop"
in_root '
set -euo pipefail
mkdir -p /srv/agent
cp "$(edgecut zoo path squeezenet)" /srv/agent/squeezenet.onnx
cat > /srv/agent/agent.toml <<EOF
[agent]
device_id = "arm64-smoke"
profile = "auto"
data_dir = "/srv/agent/data"

[api]
host = "127.0.0.1"
port = 18800

[[models]]
name = "squeezenet"
path = "/srv/agent/squeezenet.onnx"
version = "1"
warmup_runs = 1
EOF
edgecut agent --config /srv/agent/agent.toml > /srv/agent/agent.log 2>&1 &
pid=$!
python3 - <<EOF
import json, time, urllib.request
deadline = time.monotonic() + 600
while True:
    try:
        with urllib.request.urlopen("http://127.0.0.1:18800/agent/status", timeout=5) as r:
            status = json.load(r)
        break
    except OSError as exc:
        if time.monotonic() > deadline:
            raise SystemExit(f"agent did not answer: {exc}")
        time.sleep(2)
print("agent status:", json.dumps(status)[:300])
assert "squeezenet" in json.dumps(status), status
EOF
kill -TERM "$pid"
wait "$pid" && rc=0 || rc=$?
tail -n 5 /srv/agent/agent.log
echo "agent exited with $rc after SIGTERM"
test "$rc" -eq 0
'
step "passed"
