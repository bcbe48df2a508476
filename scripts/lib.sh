# Shared helpers for seam's scripts: dependency install, build, host setup. Sourced, not run.
# shellcheck shell=bash

SEAM_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SEAM_PROFILE=${SEAM_PROFILE:-release}
SEAM_BIN_DIR=${SEAM_BIN_DIR:-"$SEAM_ROOT/target/$SEAM_PROFILE"}

# The five daemons, in the order they are started (proto-types/src/role.rs has the same table).
SEAM_ROLES=(exporter loader correlator ctxprop discover)

seam_log() { printf '\033[1m[seam]\033[0m %s\n' "$*" >&2; }
seam_die() { seam_log "error: $*"; exit 1; }

seam_require_root() {
  [ "$(id -u)" = 0 ] || seam_die "run as root (seam loads eBPF programs and creates system users)"
}

# Debian packages seam needs to build, run, test and demo; only missing ones are installed.
SEAM_APT_PACKAGES=(clang llvm libbpf-dev bpftool iproute2 curl nodejs util-linux procps nginx wrk openssl systemd qemu-system-x86 mmdebstrap e2fsprogs)

seam_install_deps() {
  local missing=()
  for p in "${SEAM_APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    seam_log "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  command -v cargo >/dev/null || seam_die "cargo is missing (install Rust 1.95 with rustup)"
  command -v python3 >/dev/null || {
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 >/dev/null
  }
}

# The OpenTelemetry Python SDK (PyPI), for the test where an SDK-instrumented service and seam
# must form one trace; kept in its own virtualenv under target/.
SEAM_PY_OTEL="$SEAM_ROOT/target/py-otel"
SEAM_PY_OTEL_PACKAGES=(opentelemetry-sdk==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2)

seam_install_test_deps() {
  local py="$SEAM_PY_OTEL/bin/python"
  if [ -x "$py" ] && "$py" -c 'import opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http' 2>/dev/null; then
    return
  fi
  seam_log "installing ${SEAM_PY_OTEL_PACKAGES[*]} into $SEAM_PY_OTEL"
  rm -rf "$SEAM_PY_OTEL"
  if ! python3 -m venv "$SEAM_PY_OTEL" 2>/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    rm -rf "$SEAM_PY_OTEL"
    python3 -m venv "$SEAM_PY_OTEL"
  fi
  "$SEAM_PY_OTEL/bin/python" -m pip install -q --disable-pip-version-check "${SEAM_PY_OTEL_PACKAGES[@]}"
}

seam_build() {
  seam_log "building ($SEAM_PROFILE)"
  (cd "$SEAM_ROOT" && cargo build --workspace --bins --profile "$SEAM_PROFILE" --quiet)
}

# Users, groups, mounts and directories the privilege-separated daemons rely on. Idempotent.
seam_setup_host() {
  getent group seam >/dev/null || groupadd --system seam
  local u
  for u in seam-discover seam-loader seam-ctxprop seam seam-exporter; do
    id "$u" >/dev/null 2>&1 || useradd --system --gid seam --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin "$u"
  done
  "$SEAM_ROOT/scripts/host-setup" mounts
}

# Makes a run directory (sockets) and pin directory for one stack.
seam_make_dirs() {
  "$SEAM_ROOT/scripts/host-setup" dirs "$1" "$2"
}
