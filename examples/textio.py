"""Small file helpers shared by the example pipelines' Python tools."""
import os
import sys


def fail(message):
    """One line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def read_lines(path):
    if not os.path.isfile(path):
        fail(f"file not found: {path}")
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\n") for line in f]


def write_lines(path, lines):
    """Write through a temporary file and rename: never a half-written output."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


def read_hypotheses_and_references(hyp_path, ref_path):
    """Both files' lines; one-line error when their line counts differ."""
    hyps, refs = read_lines(hyp_path), read_lines(ref_path)
    if len(hyps) != len(refs):
        fail(f"{hyp_path} has {len(hyps)} lines but the reference {ref_path} has {len(refs)}")
    return hyps, refs
