"""The OpenAPI shape of a run's `placement` (controlplane.placement.diagnose)."""

from __future__ import annotations

from rest_framework import serializers


class WorkerVerdictSerializer(serializers.Serializer):
    id = serializers.CharField()
    matches = serializers.BooleanField(help_text="the worker carries every selector label")
    missing = serializers.ListField(
        child=serializers.CharField(), help_text="selector key=value pairs the worker lacks"
    )
    reason = serializers.CharField(
        help_text='why it cannot take the run now ("lacks k=v", "offline", "unhealthy", '
        '"draining", "busy (n/m)"); empty when it can'
    )


class PlacementSerializer(serializers.Serializer):
    selector = serializers.CharField(help_text="the run's worker selector as k=v,...")
    summary = serializers.CharField(
        help_text="one line, e.g. 0 of 5 workers can take it: 3 lack gpu=true, 1 draining"
    )
    can_take = serializers.IntegerField(help_text="workers that could take the run now")
    workers = WorkerVerdictSerializer(many=True)
