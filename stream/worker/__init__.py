"""The scoring worker on faust: app (topics and the state table), agents (thin), pipeline (the
batch flow), store (the state table), fetch_watch (fetcher checks), metrics, run (entries)."""
