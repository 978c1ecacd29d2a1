"""chatsmith labeling: the human-data schema, readers for labeler exports, ingest with quarantine,
quality statistics, control tasks and labeler screening, dataset builds and the task loop back to
labelers. See labeling/README.md.

Plain data code: importing any of it never imports torch or transformers."""
