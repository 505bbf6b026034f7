from runs.engine.control import start_run

from ._run_commands import command_for

Command = command_for(start_run, "started", "Queue the next step of queued runs.")
