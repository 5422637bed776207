# ruff: noqa: E501  (the template's HTML lines: breaking them would change the page's whitespace)
"""report.html: one page, no script and nothing fetched from the network (the CSS is inline; audio and images are
files beside it), so the folder can be zipped and opened anywhere.

Jinja2 renders it, with autoescaping on: every value that reaches the page (transcripts are user data, and so are
ids, domain names, paths and recipe text) is HTML-escaped. The one thing marked safe is this module's own style
sheet (inside <style> entities are not decoded, so escaping its quotes would break it).
Jinja2 is here anyway (torch requires it), so the page costs no new dependency. Transcripts carry `dir="auto"`:
the browser lays a Hebrew one out right to left and a Latin one left to right.
"""

from __future__ import annotations

import json

import jinja2
from markupsafe import Markup

STYLE = """
:root { --ink: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #f6f7fa; --card: #fff;
        --better: #1e7b34; --worse: #b3261e; --same: #5b6475; --hard: #b3261e; --soft: #a15c00; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 -apple-system, "Segoe UI", Roboto, "Noto Sans", "Noto Sans Hebrew", "DejaVu Sans",
       "Liberation Sans", Arial, sans-serif; color: var(--ink); background: var(--bg); }
header { background: #16324f; color: #fff; padding: 18px 28px 12px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 2px 0; color: #cfd8e3; font-size: 13px; }
nav { margin-top: 10px; display: flex; gap: 16px; flex-wrap: wrap; }
nav a { color: #fff; font-weight: 600; text-decoration: none; border-bottom: 2px solid #6fa8dc; }
main { max-width: 1180px; margin: 0 auto; padding: 8px 24px 48px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 20px;
          margin: 18px 0; }
h2 { font-size: 19px; margin: 4px 0 10px; }
h3 { font-size: 16px; margin: 18px 0 8px; }
.path { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; color: var(--muted); }
table { border-collapse: collapse; margin: 6px 0 10px; font-size: 13.5px; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 10px; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
th { background: #eef1f6; font-weight: 600; }
td.text, th.text { text-align: left; }
.scroll { overflow-x: auto; }
.decision { display: inline-block; font-weight: 700; padding: 3px 12px; border-radius: 14px; color: #fff; }
.decision.PROCEED { background: var(--better); } .decision.CAUTION { background: #c77c02; }
.decision.STOP { background: var(--worse); }
.verdict.better { color: var(--better); font-weight: 600; } .verdict.worse { color: var(--worse); font-weight: 600; }
.verdict.same { color: var(--same); }
.badge { display: inline-block; font-size: 12px; padding: 1px 8px; border-radius: 10px; margin: 0 4px 2px 0;
         border: 1px solid; }
.badge.hard { color: #fff; background: var(--hard); border-color: var(--hard); }
.badge.soft { color: var(--soft); border-color: var(--soft); }
.sample { border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; margin: 10px 0; }
.sample header { all: unset; display: flex; gap: 12px; align-items: baseline; flex-wrap: wrap; }
.sample .rank { font-weight: 700; } .sample .score { color: var(--muted); font-size: 13px; }
.transcript { font-size: 17px; margin: 6px 0; padding: 4px 8px; background: #fbfbfd;
              border-inline-start: 3px solid #6fa8dc; }
.hypothesis { font-size: 15px; margin: 4px 0; color: var(--muted); }
audio { width: 340px; max-width: 100%; height: 36px; margin: 6px 0 2px; }
ul.evidence { margin: 4px 0; padding-left: 20px; }
.note { color: var(--muted); font-size: 13px; }
.warning { color: var(--worse); }
details { margin: 6px 0; } summary { cursor: pointer; color: #16324f; font-weight: 600; }
pre { background: #f1f3f7; padding: 10px 12px; border-radius: 6px; overflow-x: auto; font-size: 12.5px; }
img.plot { max-width: 100%; border: 1px solid var(--line); border-radius: 4px; }
.cmd { margin: 8px 0; } .cmd pre { margin: 2px 0; }
"""

TEMPLATE = r"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Caspi report{% if title %}: {{ title }}{% endif %}</title>
<style>{{ style }}</style>
</head>
<body>
<header>
<h1>Caspi report{% if title %}: {{ title }}{% endif %}</h1>
<p>made {{ created }} by caspi {{ version }} from {{ inputs | join(", ") }}</p>
{% for note in notes %}<p>{{ note }}</p>{% endfor %}
<nav>
<a href="#summary">Summary</a>
{% if audits %}<a href="#phase0">Phase 0 audit</a>{% endif %}
{% if compares %}<a href="#comparison">{{ compares[-1].names[0] }} vs {{ compares[-1].names[1] }}</a>{% endif %}
{% if runs %}<a href="#training">Training</a>{% endif %}
<a href="#commands">Recipe and commands</a>
</nav>
</header>
<main>

<section id="summary">
<h2>Summary</h2>
{% for a in audits %}
<p>Phase 0 ({{ a.folder.name }}): <span class="decision {{ a.report.decision }}">{{ a.report.decision }}</span>
{{ "%.1f" | format(a.report.low_quality_percentage) }} % of the manifest estimated low quality
{% if a.report.low_quality_ci95 %}(95 % CI {{ "%.1f" | format(a.report.low_quality_ci95[0]) }}–{{ "%.1f" | format(a.report.low_quality_ci95[1]) }} %){% endif %};
{{ a.flagged | length }} samples flagged.</p>
{% endfor %}
{% if compares %}{% set c = compares[-1] %}
<div class="scroll"><table class="glance">
<tr><th>domain</th><th>{{ c.names[0] }} WER</th><th>{{ c.names[1] }} WER</th><th class="text">WER verdict</th>
<th>{{ c.names[0] }} CER</th><th>{{ c.names[1] }} CER</th><th class="text">CER verdict</th></tr>
{% for r in c.rows %}
<tr><td>{{ r.dataset }}</td><td>{{ r.wer.a }}</td><td>{{ r.wer.b }}</td>
<td class="text verdict {{ r.wer.tone }}">{{ r.wer.verdict }}</td>
<td>{{ r.cer.a }}</td><td>{{ r.cer.b }}</td><td class="text verdict {{ r.cer.tone }}">{{ r.cer.verdict }}</td></tr>
{% endfor %}
</table></div>
{% endif %}
{% for run in runs %}
<p>Run {{ run.folder.name }}: {% for label, value in run.facts[:3] %}{{ label }} {{ value }}{% if not loop.last %}; {% endif %}{% endfor %}.</p>
{% endfor %}
{% if not (audits or compares or runs) %}<p class="note">Nothing to report.</p>{% endif %}
</section>

{% if audits %}
<section id="phase0">
{% for a in audits %}{% set ai = loop.index %}
<h2>Phase 0 audit <span class="path">{{ a.folder }}</span></h2>
<p><span class="decision {{ a.report.decision }}">{{ a.report.decision }}</span>
estimated low quality in the manifest: <b>{{ "%.1f" | format(a.report.low_quality_percentage) }} %</b>
{% if a.report.low_quality_ci95 %}(95 % CI {{ "%.1f" | format(a.report.low_quality_ci95[0]) }}–{{ "%.1f" | format(a.report.low_quality_ci95[1]) }} %){% endif %}
{% if a.report.thresholds %} · proceed below {{ a.report.thresholds.proceed_below }} %, stop above {{ a.report.thresholds.stop_above }} %{% endif %}</p>
<p>{{ a.report.total_samples }} samples audited, {{ a.report.low_quality_samples }} flagged
({{ a.report.hard_failure_samples }} hard failures, {{ a.report.soft_only_samples }} soft outliers only).
{% if a.report.cleaning %}Cleaning: {{ a.report.cleaning.removed_samples }} of {{ a.report.cleaning.scored_samples }} samples removed{% if a.report.cleaning.note %} ({{ a.report.cleaning.note }}){% endif %}.{% endif %}
{% if a.report.reasons %} Reasons: {% for r, n in a.report.reasons.items() %}{{ r }} {{ n }}{% if not loop.last %}, {% endif %}{% endfor %}.{% endif %}</p>
{% for note in a.notes %}<p class="note warning">{{ note }}</p>{% endfor %}

<h3>Per domain</h3>
<div class="scroll"><table class="domains">
<tr><th>domain</th>{% for key, label in a.domain_columns %}<th>{{ label }}</th>{% endfor %}</tr>
{% for domain, cells in a.domains %}<tr><td>{{ domain }}</td>{% for cell in cells %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}
</table></div>
{% for line in a.visibility %}<p class="visibility">{{ line }}</p>
{% endfor %}

<h3>Flagged samples</h3>
<p class="note">{{ a.flagged | length }} flagged (the decision sample's and those cleaning removed), ranked: hard
failures first, then by score, the largest |z| behind the reasons (the z its scorer flagged on). {% if a.shown < a.flagged | length %}The first
{{ a.shown }} are listed with their audio (raise <code>--max-samples</code> for more).{% endif %}</p>
{% for s in a.flagged[:a.shown] %}
<article class="sample" id="a{{ ai }}-s{{ loop.index }}">
<header><span class="rank">#{{ loop.index }}</span><span class="sample-id">{{ s.id }}</span>
<span class="note">{{ s.domain }}{% if s.duration %} · {{ "%.2f" | format(s.duration) }} s{% endif %} · {{ s.found_by | join(", ") }}</span>
<span class="score">{{ s.score_text }}</span></header>
{% if s.audio %}<audio controls preload="metadata" src="{{ s.audio }}"></audio>
{% else %}<p class="note">{{ s.audio_note }}</p>{% endif %}
{% if s.text is not none %}<p class="transcript" dir="auto">{{ s.text }}</p>{% endif %}
{% if s.hypothesis is not none %}<p class="hypothesis">model heard: <span dir="auto">{{ s.hypothesis }}</span></p>{% endif %}
<ul class="evidence">
{% for e in s.evidence %}<li><span class="badge {{ 'hard' if e.hard else 'soft' }}">{{ e.reason }}</span>{{ e.text }}</li>
{% endfor %}
</ul>
{% if s.rows %}<details><summary>all measurements</summary><table>
<tr><th>scorer</th><th class="text">measurement</th><th>value</th><th class="text">reference</th></tr>
{% for m in s.rows %}<tr><td>{{ m.scorer }}</td><td class="text">{{ m.key }}</td><td>{{ m.value }}</td><td class="text">{{ m.reference }}</td></tr>
{% endfor %}
</table></details>{% endif %}
</article>
{% endfor %}
{% if a.shown < a.flagged | length %}
<details><summary>{{ a.flagged | length - a.shown }} more flagged samples (no audio)</summary>
<div class="scroll"><table><tr><th>id</th><th class="text">domain</th><th class="text">reasons</th><th>score</th></tr>
{% for s in a.flagged[a.shown:a.shown + 2000] %}<tr><td>{{ s.id }}</td><td class="text">{{ s.domain }}</td>
<td class="text">{{ s.reasons | join(", ") }}</td><td>{{ s.score_text }}</td></tr>
{% endfor %}</table></div></details>
{% endif %}
<details><summary>Scorers, sampling and the rest of alignment_report.json</summary>
<pre>{{ a.other | tojson_pretty }}</pre></details>
{% endfor %}
</section>
{% endif %}

{% if compares %}
<section id="comparison">
{% for c in compares %}
<h2>{{ c.names[0] }} vs {{ c.names[1] }} <span class="path">{{ c.folder }}</span></h2>
{% for metric in ("wer", "cer") %}
<h3>{{ metric | upper }} per domain</h3>
<div class="scroll"><table class="compare {{ metric }}">
<tr><th>domain</th><th>utterances</th><th>{{ c.names[0] }} (95 % CI)</th><th>{{ c.names[1] }} (95 % CI)</th>
<th>{{ c.names[1] }} − {{ c.names[0] }} (95 % CI)</th><th>p (BH)</th><th class="text">verdict</th></tr>
{% for r in c.rows %}{% set m = r[metric] %}
<tr><td>{{ r.dataset }}</td><td>{{ r.utterances }}</td><td>{{ m.a }}</td><td>{{ m.b }}</td><td>{{ m.difference }}</td>
<td>{{ m.p }}</td><td class="text verdict {{ m.tone }}">{{ m.verdict }}</td></tr>
{% endfor %}
</table></div>
{% endfor %}
{% if c.meta.test %}<p class="note">{{ c.meta.test }}; {{ c.meta.resamples }} resamples, α = {{ c.meta.alpha }}.</p>{% endif %}
{% if c.plot %}<img class="plot" src="{{ c.plot }}" alt="{{ c.names[0] }} vs {{ c.names[1] }}: WER per domain">{% endif %}
{% endfor %}
</section>
{% endif %}

{% if runs %}
<section id="training">
{% for run in runs %}
<h2>Training run <span class="path">{{ run.folder }}</span></h2>
{% for note in run.notes %}<p class="note warning">{{ note }}</p>{% endfor %}
<table class="facts">{% for label, value in run.facts %}<tr><th class="text">{{ label }}</th><td class="text">{{ value }}</td></tr>{% endfor %}</table>
{% if run.curves %}<img class="plot curves" src="{{ run.curves }}" alt="{{ run.folder.name }}: training curves">{% endif %}
{% if run.listed_events %}<h3>Events</h3>
<div class="scroll"><table><tr><th>step</th><th class="text">event</th><th class="text">message</th></tr>
{% for e in run.listed_events %}<tr><td>{{ e.step }}</td><td class="text">{{ e.event }}</td><td class="text">{{ e.message }}</td></tr>
{% endfor %}</table></div>{% endif %}
{% if run.meta %}<details><summary>run.json</summary><table>
{% for key, value in run.meta.items() if key != "recipe" %}<tr><th class="text">{{ key }}</th><td class="text"><code>{{ value | tojson_compact }}</code></td></tr>
{% endfor %}</table></details>{% endif %}
{% endfor %}
</section>
{% endif %}

<section id="commands">
<h2>Recipe and commands</h2>
{% for run in runs %}{% if run.recipe_yaml %}
<details><summary>Recipe of {{ run.folder.name }}{% if run.meta.overrides %} (overrides: {{ run.meta.overrides | join(" ") }}){% endif %}</summary>
<pre class="recipe">{{ run.recipe_yaml }}</pre></details>
{% endif %}{% endfor %}
<h3>Commands, in the order they ran</h3>
{% for c in commands %}
<div class="cmd"><span class="note">{{ c.started_at }} · in {{ c.cwd }} · {{ c.status }}{% if c.seconds is not none %} · {{ "%.1f" | format(c.seconds) }} s{% endif %}</span>
<pre>$ {{ c.line }}</pre></div>
{% else %}<p class="note">No command was recorded in these folders.</p>
{% endfor %}
{% for note in command_notes %}<p class="note">{{ note }}</p>{% endfor %}
</section>
</main>
</body>
</html>
"""


def _json_filter(indent: int | None):
    def dump(value) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent, default=str, allow_nan=True)

    return dump


def environment() -> jinja2.Environment:
    # A report written by another Caspi version may lack a key the template reads: it renders empty (and a missing
    # nested key too), rather than failing the whole page.
    env = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined, trim_blocks=True, lstrip_blocks=True)
    # Not jinja's `tojson`: that one escapes <, >, & as \u003c... for <script> blocks, unreadable inside <pre>;
    # these return plain text, which autoescaping then escapes like any other value.
    env.filters["tojson_pretty"] = _json_filter(2)
    env.filters["tojson_compact"] = _json_filter(None)
    return env


def render(**context) -> str:
    """The page from the report's sections (see `caspi.report.build.build_report` for the context)."""
    return environment().from_string(TEMPLATE).render(style=Markup(STYLE), **context)
