"""Workflow templates (export, check, import), Scipion workflow import, branches, diff.

- :mod:`hpcem.workflow.template`: runs of a project -> a template document;
- :mod:`hpcem.workflow.load`: read and check a template, recreate its runs;
- :mod:`hpcem.workflow.placeholders`: values a template asks for (``--set``);
- :mod:`hpcem.workflow.scipion`: a Scipion workflow JSON -> a template (mapping table);
- :mod:`hpcem.workflow.branch`: copy a run and its downstream runs; compare two runs.
"""
