"""The model registry with cairn: two training runs each log a model; both are registered as versions of
one name, the better one gets the alias ``champion`` (and, MLflow 1 style, the stage ``Production``), and
the model is loaded by alias, by stage and by version, with the run each version came from.

Run it::

    python examples/registry_workflow.py                  # into ./cairn-runs (or $CAIRN_TRACKING_URI)
    python examples/registry_workflow.py --store /tmp/runs

Small by default (a few seconds); ``--small`` / ``CAIRN_EXAMPLE_SMALL=1`` are accepted and change nothing.
The same from a shell: ``cairn models list``, ``cairn models versions NAME`` (see ``cairn models --help``).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import cairn

NAME = "wine-classifier"


def main() -> None:
    parser = argparse.ArgumentParser(description="register, alias, stage and load models with cairn")
    parser.add_argument("--store", help="tracking store (default: $CAIRN_TRACKING_URI, else ./cairn-runs)")
    parser.add_argument("--small", action="store_true", help="accepted; the example is small already")
    args = parser.parse_args()
    if args.store:
        cairn.set_tracking_uri(args.store)

    X, y = load_wine(return_X_y=True, as_frame=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, random_state=0)
    cairn.set_experiment("registry-workflow")
    client = cairn.Client()

    versions = []
    for C in (0.001, 1.0):  # a weak model and a good one
        with cairn.start_run(run_name=f"logreg-C{C}") as run:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000)).fit(X_train, y_train)
            accuracy = float(model.score(X_test, y_test))
            cairn.log_param("C", C)
            cairn.log_metric("test_accuracy", accuracy)
            info = cairn.sklearn.log_model(model, name="model", input_example=X_train.head(3))
        version = cairn.register_model(info.model_uri, NAME)  # version 1, 2, ... (more on each run of this script)
        versions.append((accuracy, version.version))
        print(f"run {run.info.run_id} (C={C}): test accuracy {accuracy:.3f} -> {NAME} version {version.version}")

    _, best = max(versions)
    client.set_registered_model_alias(NAME, "champion", best)
    client.transition_model_version_stage(NAME, best, "Production", archive_existing_versions=True)
    client.update_model_version(NAME, best, description="best test accuracy of its batch")

    all_versions = client.search_model_versions(f"name = '{NAME}'")
    print(f"\n{NAME}: {len(all_versions)} versions")
    champion = client.get_model_version_by_alias(NAME, "champion")
    lineage = client.get_model_version_lineage(NAME, champion.version)
    print(f"  @champion = version {champion.version}, stage {champion.current_stage}, aliases {champion.aliases}")
    print(f"  it came from run {lineage.run_id}: params {lineage.params}, metrics {lineage.metrics}")

    rows = X_test.head(4)
    for uri in (f"models:/{NAME}@champion", f"models:/{NAME}/Production", f"models:/{NAME}/{champion.version}"):
        predictions = np.asarray(cairn.pyfunc.load_model(uri).predict(rows))
        print(f"  {uri:<34} predicts {predictions.tolist()} (truth {y_test.head(4).tolist()})")
    if champion.version != str(best):
        raise SystemExit("FAILED: the alias does not point at the best version")


if __name__ == "__main__":
    main()
