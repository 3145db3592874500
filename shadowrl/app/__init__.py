"""The use cases behind the ``shadowrl`` commands, for the CLI and (later) an HTTP API.

One module per use case, each a function taking a typed request (pydantic) and returning a
typed result (``shadowrl.app.models``), reporting progress through ``on_progress(done,
total, label)`` callbacks and printing nothing::

    validate.validate(ValidateRequest)      -> ValidateResult
    simulate.simulate(SimulateRequest)      -> RehearsalResult
    rehearse.rehearse(RehearseRequest)      -> CampaignSummary
    evaluate.evaluate(EvaluateRequest)      -> EvaluationSummary
    optimize.optimize(OptimizeRequest)      -> OptimizeResult
    train.train(TrainRequest)               -> TrainResult
    export.export(ExportRequest)            -> ExportResult

Bad input raises ``shadowrl.core.spec.SpecError`` (problems naming file, line and field) or
``shadowrl.app.errors.UsageError`` (one line). Ray, MLflow and the RL stack are imported
only by the use cases that need them, when they run.
"""
