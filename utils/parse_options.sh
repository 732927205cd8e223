# utils/parse_options.sh -- turn "--name value" command-line options into
# shell variables.  This file is meant to be *sourced* (not executed) by a
# bash recipe script, after the script has given every option a default:
#
#     nj=4                 # number of parallel jobs
#     use_gpu=false        # booleans take the words true / false
#     help_message="Usage: $0 [options] <data-dir> <exp-dir>"
#     . utils/parse_options.sh || exit 1
#     data=$1; exp=$2      # what is left in "$@" are the positional args
#
# Rules:
#   * "--some-name VALUE", "--some_name VALUE" and "--some-name=VALUE" all set
#     the variable some_name (dashes become underscores), but only if the
#     calling script already defined that variable; any other option is an
#     error ("<script>: unknown option --some-name") and the script exits 1.
#   * If the current value of the variable is "true" or "false", the new
#     value must be "true" or "false" as well.
#   * "--help" or "-h" prints $help_message (if set) and exits 0.
#   * Parsing stops at the first argument that does not start with "--", or
#     right after a lone "--".  The consumed options are shifted out of "$@".
#   * An option at the very end of the line with no value is an error.
#
# Only variables whose names start with "__po_" are used internally; they are
# unset again before returning, so the caller's namespace is left alone.

__po_prog=$(basename -- "${0:-script}")

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      if [ -n "${help_message:-}" ]; then
        printf '%s\n' "$help_message"
      else
        echo "$__po_prog: no help message is available for this script"
      fi
      exit 0
      ;;
    --)
      shift
      break
      ;;
    --?*=*)
      __po_opt=${1%%=*}
      __po_val=${1#*=}
      shift
      ;;
    --?*)
      __po_opt=$1
      if [ $# -lt 2 ]; then
        echo "$__po_prog: option $__po_opt needs a value (e.g. $__po_opt <value>)" >&2
        exit 1
      fi
      __po_val=$2
      shift 2
      ;;
    *)
      break
      ;;
  esac

  __po_var=${__po_opt#--}
  __po_var=${__po_var//-/_}
  if [[ ! $__po_var =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [[ $__po_var == __po_* ]]; then
    echo "$__po_prog: unknown option $__po_opt" >&2
    exit 1
  fi
  if [ -z "${!__po_var+defined}" ]; then
    echo "$__po_prog: unknown option $__po_opt" >&2
    exit 1
  fi
  case "${!__po_var}" in
    true|false)
      case "$__po_val" in
        true|false) ;;
        *)
          echo "$__po_prog: option $__po_opt expects true or false, got '$__po_val'" >&2
          exit 1
          ;;
      esac
      ;;
  esac
  if ! printf -v "$__po_var" '%s' "$__po_val" 2>/dev/null; then
    echo "$__po_prog: cannot set $__po_var from option $__po_opt (read-only?)" >&2
    exit 1
  fi
done

unset __po_prog __po_opt __po_val __po_var
true  # make sure sourcing this file succeeds under "set -e"
