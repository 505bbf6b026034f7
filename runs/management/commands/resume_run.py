from runs.engine.control import resume_run

from ._run_commands import command_for

Command = command_for(resume_run, "resumed", "Resume paused runs.")
