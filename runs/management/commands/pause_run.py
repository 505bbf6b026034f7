from runs.engine.control import pause_run

from ._run_commands import command_for

Command = command_for(pause_run, "paused", "Pause runs: the iteration in flight finishes, no new step starts.")
