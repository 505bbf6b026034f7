from runs.engine.control import cancel_run

from ._run_commands import command_for

Command = command_for(cancel_run, "cancelled", "Cancel runs; a training in flight is stopped and not recorded.")
