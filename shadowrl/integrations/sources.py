"""Export sources that integrations load, recognised by their form alone.

MLflow takes seconds to import and is an extra, so whether a source is an MLflow run id or a
``models:/`` URI is decided here, without importing it. The CLI hands :data:`RESOLVERS` to
:func:`shadowrl.export.sources.load_source`; export itself never imports an integration.
"""

from __future__ import annotations

import re

from shadowrl.core.errors import naming
from shadowrl.export.sources import ExportSource, SourceError, SourceResolver

RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def is_mlflow_source(source: str) -> bool:
    """A 32-hex MLflow run id or a ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) URI."""
    return bool(RUN_ID.match(source)) or source.startswith("models:/")


def load_mlflow_source(source: str) -> ExportSource:
    """The procedure behind an MLflow run or registered model version
    (:func:`shadowrl.integrations.mlflow.load_export_source`); any failure, MLflow missing
    included, is a :class:`SourceError` naming the source."""
    try:
        from shadowrl.integrations.mlflow import load_export_source
    except ImportError as exc:
        raise SourceError(f"{source}: MLflow sources need shadowrl.integrations.mlflow, "
                          f"which is not available ({exc})") from None
    try:
        return load_export_source(source)
    except (ImportError, ValueError, LookupError, OSError) as exc:
        raise SourceError(naming(source, exc)) from None
    except Exception as exc:  # MLflow's own errors (MlflowException, REST errors)
        if type(exc).__module__.split(".")[0] != "mlflow":
            raise
        raise SourceError(naming(source, exc)) from None


MLFLOW = SourceResolver(forms="an MLflow run id or models:/NAME@ALIAS",
                        matches=is_mlflow_source, load=load_mlflow_source)
RESOLVERS: tuple[SourceResolver, ...] = (MLFLOW,)
