"""`caspi report`: one self-contained HTML page a person opens, built from what the other commands wrote.

    result = build_report(["runs/phase0", "runs/r1-vs-r2", "runs/round2"], "runs/report")
    result.page  # runs/report/report.html, beside audio/ and the PNG files it shows

Modules: `commands` (the command lines each folder's CLI runs recorded: light, the CLI imports it on every run),
`inputs` (which folder is what), `audit` (the Phase 0 section: flagged samples ranked, their evidence and audio),
`runs` (training curves), `page` (the HTML template), `build` (the whole report), `screenshot` (a PNG of the page
in headless Chromium, `caspi report --screenshot`). This file imports nothing, so
that `caspi.report.commands` stays cheap to import.
"""
