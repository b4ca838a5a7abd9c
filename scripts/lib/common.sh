# Helpers shared by the scripts in scripts/: messages, usage errors, and commands that --dry-run prints instead
# of running. Sourced, not run; the script sets dry_run=true for --dry-run. Everything goes to stderr, so a
# command whose output a script captures (a new volume's id) is shown without polluting it.

# shellcheck shell=bash

SCRIPT_NAME=$(basename "$0" .sh)
dry_run=false

say() {
    echo "$SCRIPT_NAME: $*" >&2
}

# A mistake the user can fix: the message names the flag, file or value and the fix; exit status 2 (usage).
die() {
    say "error: $*"
    exit 2
}

# Words as one shell line a person can copy: plain words bare, anything else single-quoted.
shell_line() {
    local word line=""
    for word in "$@"; do
        if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
            line+=" $word"
        else
            line+=" '${word//\'/\'\\\'\'}'"
        fi
    done
    echo "${line# }"
}

# run COMMAND [ARG...]: print "+ COMMAND ..." and run it, or only print it under --dry-run.
run() {
    echo "+ $(shell_line "$@")" >&2
    if ! $dry_run; then
        "$@"
    fi
}

# capture VARIABLE PLACEHOLDER COMMAND [ARG...]: print the command and store its output in VARIABLE; under
# --dry-run store PLACEHOLDER instead (what later commands then show in place of the real value).
capture() {
    local variable=$1 placeholder=$2 output
    shift 2
    echo "+ $variable=\$($(shell_line "$@"))" >&2
    if $dry_run; then
        output=$placeholder
    else
        output=$("$@")
    fi
    printf -v "$variable" '%s' "$output"
}

# need_value OPTION ARGC [VALUE]: the option was given a value (not missing, not the next option).
need_value() {
    if (($2 < 2)) || [[ "$3" == -* ]]; then
        die "$1 needs a value (see --help)"
    fi
}

# need_number OPTION VALUE: a whole number, such as a size in GiB.
need_number() {
    [[ "$2" =~ ^[0-9]+$ ]] || die "$1 needs a whole number, not '$2'"
}

# need_command NAME HINT: NAME is on PATH, or a usage error that says how to get it.
need_command() {
    command -v "$1" >/dev/null || die "$1 not found on PATH; $2"
}
