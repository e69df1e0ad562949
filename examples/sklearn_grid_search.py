"""scikit-learn with cairn: ``cairn.sklearn.autolog()`` logs a grid search as a parent run (params, the
best candidate, the fitted best estimator) with one child run per best candidate; the model is loaded
back through ``pyfunc`` and scored.

Run it::

    python examples/sklearn_grid_search.py                  # into ./cairn-runs (or $CAIRN_TRACKING_URI)
    python examples/sklearn_grid_search.py --store /tmp/runs

``--small`` (or ``CAIRN_EXAMPLE_SMALL=1``) searches a smaller grid.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
from sklearn.datasets import load_iris
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

import cairn


def main() -> None:
    parser = argparse.ArgumentParser(description="a grid search logged by cairn.sklearn.autolog()")
    parser.add_argument("--store", help="tracking store (default: $CAIRN_TRACKING_URI, else ./cairn-runs)")
    parser.add_argument("--small", action="store_true", help="a smaller grid (also CAIRN_EXAMPLE_SMALL=1)")
    args = parser.parse_args()
    small = args.small or os.environ.get("CAIRN_EXAMPLE_SMALL", "") not in ("", "0")
    if args.store:
        cairn.set_tracking_uri(args.store)

    X, y = load_iris(return_X_y=True, as_frame=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
    grid = {"svc__C": [0.1, 1.0, 10.0], "svc__kernel": ["linear", "rbf"]}
    if small:
        grid = {"svc__C": [0.1, 1.0], "svc__kernel": ["linear", "rbf"]}

    cairn.set_experiment("sklearn-grid-search")
    cairn.sklearn.autolog(max_tuning_runs=3)  # parent run + a child run for each of the 3 best candidates
    search = GridSearchCV(make_pipeline(StandardScaler(), SVC()), grid, cv=3)
    with cairn.start_run(run_name="svc-grid") as run:
        search.fit(X_train, y_train)
        cairn.log_metric("test_accuracy", float(search.score(X_test, y_test)))
    cairn.sklearn.autolog(disable=True)

    client = cairn.Client()
    parent = client.get_run(run.info.run_id)
    children = cairn.search_runs(
        experiment_names=["sklearn-grid-search"],
        filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
        output_format="list",
    )
    print(f"grid search run {run.info.run_id}: {len(grid['svc__C']) * len(grid['svc__kernel'])} candidates")
    print(
        f"  best params: {search.best_params_}, cv score {parent.data.metrics.get('best_cv_score', float('nan')):.3f}"
    )
    print(f"  test accuracy: {parent.data.metrics['test_accuracy']:.3f}")
    print(f"  child runs (best candidates): {len(children)}")
    if not children:
        raise SystemExit("FAILED: the grid search has no child runs")

    model = cairn.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    predictions = np.asarray(model.predict(X_test.head(5)))
    print(f"  pyfunc predict on 5 test rows: {predictions.tolist()} (truth {y_test.head(5).tolist()})")


if __name__ == "__main__":
    main()
