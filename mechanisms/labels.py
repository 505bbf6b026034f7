"""How work done without an LLM is labelled wherever it is shown: Level 1's built-in agent, Level 2's
built-in responder, their runs, comparisons and sessions. It lives here because runs/ may import
mechanisms/ (and not the other way round): runs.models.AgentBackend takes its label from it."""

BUILTIN_LABEL = "built-in heuristic (no LLM)"
