"""REST API serializers of retry events and jobs in flight (read-only: both are written by the plugin only)."""

from core.api.serializers import JobSerializer
from netbox.api.fields import ChoiceField
from netbox.api.serializers import BaseModelSerializer
from rest_framework import serializers

from ..choices import JobDispatchStateChoices, RetryEventKindChoices
from ..models import JobDispatch, RetryEvent

__all__ = (
    'JobDispatchSerializer',
    'RetryEventSerializer',
    'StopRequestSerializer',
    'StopResultSerializer',
)


class RetryEventSerializer(BaseModelSerializer):
    kind = ChoiceField(choices=RetryEventKindChoices, read_only=True)
    # NetBox's Job, nested (brief), while its row exists and the user may view it (null otherwise: the view prefetches
    # it from the Jobs the user may view); job_uuid and job_name always identify the job.
    job = JobSerializer(
        nested=True, read_only=True, allow_null=True,
        fields=('id', 'url', 'display_url', 'display', 'name', 'status', 'created', 'completed'),
    )

    class Meta:
        model = RetryEvent
        fields = (
            'id', 'url', 'display_url', 'display', 'time', 'kind', 'job', 'job_uuid', 'job_name', 'runner', 'queue',
            'attempt', 'delay', 'detail', 'worker_host', 'worker_pid',
        )
        read_only_fields = fields
        brief_fields = ('id', 'url', 'display', 'time', 'kind', 'job_uuid')


class JobDispatchSerializer(BaseModelSerializer):
    """
    A job in flight, from ``in_flight.dispatch_queryset`` (its annotations: ``dispatch_state``, ``age``,
    ``job_name``, ``job_scheduled``, the worker's heartbeat). Never the stored push, nor the lease's attempt token.
    """
    state = ChoiceField(choices=JobDispatchStateChoices, source='dispatch_state', read_only=True)
    # As for retry events: the nested Job only for a user who may view it (the viewset prefetches it from those).
    job = JobSerializer(
        nested=True, read_only=True, allow_null=True,
        fields=('id', 'url', 'display_url', 'display', 'name', 'status', 'created', 'completed'),
    )
    job_name = serializers.CharField(read_only=True)
    queue = serializers.CharField(source='queue_name', read_only=True)
    age = serializers.SerializerMethodField(help_text='Seconds since the job was enqueued (database clock)')
    scheduled = serializers.DateTimeField(
        source='job_scheduled', read_only=True, allow_null=True,
        help_text="The Job's scheduled time: when a job in the state scheduled is due",
    )
    worker_name = serializers.CharField(read_only=True, allow_null=True)
    worker_seen = serializers.DateTimeField(read_only=True, allow_null=True)
    last_heartbeat = serializers.DateTimeField(read_only=True, allow_null=True)

    class Meta:
        model = JobDispatch
        fields = (
            'id', 'url', 'display_url', 'display', 'job', 'job_uuid', 'job_name', 'runner', 'queue', 'method', 'state',
            'age', 'scheduled', 'created', 'sent', 'owed', 'claimed', 'recoveries', 'failures', 'worker', 'worker_name',
            'worker_host', 'worker_pid', 'heartbeat', 'worker_seen', 'last_heartbeat',
        )
        read_only_fields = fields
        brief_fields = ('id', 'url', 'display', 'job_uuid', 'state')

    def get_age(self, obj) -> float | None:
        age = getattr(obj, 'age', None)
        return round(age.total_seconds(), 3) if age is not None else None


class StopRequestSerializer(serializers.Serializer):
    """What stops running jobs: their Job IDs (for the list endpoint) and whether a periodic job gets its next run."""
    jobs = serializers.ListField(child=serializers.IntegerField(min_value=1), min_length=1, max_length=1000,
                                 required=False, help_text='Job IDs (core.Job); required by the list endpoint')
    next_run = serializers.BooleanField(default=True, help_text='Schedule the next run of a periodic job')

    def validate_jobs(self, value):
        # IntegerField takes "3", 3.0 and true as numbers: a Job ID must be an integer, as written.
        if any(isinstance(pk, bool) or not isinstance(pk, int) for pk in self.initial_data.get('jobs', [])):
            raise serializers.ValidationError('A Job ID is an integer.')
        return value


class StopResultSerializer(serializers.Serializer):
    """The outcome of one stop (``stopping.StopOutcome``, or ``not_found``) and the message an operator reads."""
    job = serializers.IntegerField()
    outcome = serializers.CharField()
    message = serializers.CharField()
    worker = serializers.CharField(allow_blank=True)
