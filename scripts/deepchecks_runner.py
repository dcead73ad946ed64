"""Deepchecks yardstick: run deepchecks' tabular suites on a saved train/test split.

This is an outside yardstick, not part of the project: it never imports the
project, and deepchecks is never a dependency of it. Run it in its own venv:

    python3 -m venv /work/deepchecks-venv
    /work/deepchecks-venv/bin/pip install deepchecks==0.19.1 scikit-learn==1.5.2 \
        pandas==2.2.3 numpy==1.26.4 category-encoders==2.6.4
    /work/deepchecks-venv/bin/python scripts/deepchecks_runner.py ARRAYS.npz

ARRAYS.npz holds x_train, y_train, x_test, y_test (x of any shape, flattened to
2-D numeric features f0..fN-1; integer labels). It runs the `data_integrity`
suite on each split (train and test separately) and `train_test_validation` on
(train, test), and prints one JSON object to stdout:

    {"checks": [{"suite", "check", "passed": true/false/null, "summary"}]}

A check fails when any of its conditions fails (warnings count as failures);
checks that did not run or have no conditions get passed = null.
Everything deepchecks prints (progress bars, warnings) goes to stderr.
"""
import contextlib
import json
import sys
import time

import numpy as np


def to_dataset(x, y):
    import pandas as pd
    from deepchecks.tabular import Dataset

    x = np.asarray(x).reshape(len(x), -1)
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(x.shape[1])])
    df["label"] = np.asarray(y).astype(int)
    return Dataset(df, label="label", cat_features=[], label_type="multiclass")


def short(text, limit=200):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def rows(suite_name, result):
    from deepchecks.core.check_result import CheckFailure

    out = []
    for r in result.results:
        if isinstance(r, CheckFailure):
            out.append((r.get_header(), None, f"did not run: {r.exception}"))
        elif not r.have_conditions():
            value = r.value
            if isinstance(value, np.ndarray):
                value = f"array of {value.size}, max {value.max():.3g}, mean {value.mean():.3g}"
            out.append((r.get_header(), None, f"value: {value}"))
        else:
            bad = [c for c in r.conditions_results if not c.is_pass()]
            shown = bad or r.conditions_results
            text = "; ".join(f"{c.name}: {c.details}" for c in shown)
            out.append((r.get_header(), not bad, text))
    return [{"suite": suite_name, "check": name, "passed": passed, "summary": short(text)}
            for name, passed, text in out]


def main(path):
    arrays = np.load(path)
    with contextlib.redirect_stdout(sys.stderr):
        from deepchecks.tabular.suites import data_integrity, train_test_validation

        train = to_dataset(arrays["x_train"], arrays["y_train"])
        test = to_dataset(arrays["x_test"], arrays["y_test"])
        start = time.perf_counter()
        integrity = data_integrity().run(train_dataset=train, test_dataset=test, with_display=False)
        middle = time.perf_counter()
        validation = train_test_validation().run(train, test, with_display=False)
        print(f"data_integrity {middle - start:.1f} s, "
              f"train_test_validation {time.perf_counter() - middle:.1f} s", file=sys.stderr)
    checks = rows("data_integrity", integrity) + rows("train_test_validation", validation)
    print(json.dumps({"checks": checks}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: deepchecks_runner.py ARRAYS.npz")
    main(sys.argv[1])
