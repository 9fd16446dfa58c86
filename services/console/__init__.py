"""The operator console (``dfm run console``): server-rendered pages over the operations layer
the admin API and the CLI use, so the three never disagree (issue #19)."""
