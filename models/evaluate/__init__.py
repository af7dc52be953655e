"""The evaluation protocol of EVALUATION.md (v1), numpy only: data, baselines, metrics, churn,
protocol (see its docstring) and report."""
