from django.contrib import admin

from .models import Experiment, Iteration, LLMCall, OuterCycle, Run, WorkerHeartbeat


@admin.register(Experiment)
class ExperimentAdmin(admin.ModelAdmin):
    list_display = ("name", "objective", "agent_backend", "acceptance_policy", "created_at")
    exclude = ("llm_api_key",)


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = ("id", "experiment", "group", "repeat", "status", "best_val_bpb")
    list_filter = ("status", "group")


admin.site.register(Iteration)
admin.site.register(OuterCycle)
admin.site.register(LLMCall)
admin.site.register(WorkerHeartbeat)
