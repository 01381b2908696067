"""results.py: bench/results/YYYY-MM-DD-DEVICE.json, the file every GPU
benchmark of bench/gpu.sh writes its figures to: a list of objects, each
with a `name` (what was measured: "attention", "gpt2-124m-train") and the
fields that benchmark defines.  Each script merges its entries in: an
entry already there with the same key (the script's key function, over
its own entries' fields) is replaced, every other entry is kept, so the
steps of one gpu.sh run, and reruns of one step, share the file."""
import datetime
import json
import os
import re


def path_for(device, root="bench/results", day=None):
    """The file for DEVICE's results of DAY (default today): ROOT/YYYY-MM-DD-DEVICE.json,
    the device's name with every run of other characters than letters and digits as one dash."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", device).strip("-")
    return os.path.join(root, f"{(day or datetime.date.today()).isoformat()}-{slug}.json")


def merge(path, entries, key):
    """Writes PATH as its old entries, less those whose key(entry) is some new
    entry's, then ENTRIES.  key sees every entry of the file, other
    benchmarks' too: read fields with .get, so a field they lack is None."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    old = []
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    new = {key(e) for e in entries}
    with open(path, "w") as f:
        json.dump([e for e in old if key(e) not in new] + entries, f, indent=1)
        f.write("\n")
