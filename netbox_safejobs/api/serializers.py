"""REST API serializer of retry events (read-only: events are written by the plugin only)."""

from core.api.serializers import JobSerializer
from netbox.api.fields import ChoiceField
from netbox.api.serializers import BaseModelSerializer

from ..choices import RetryEventKindChoices
from ..models import RetryEvent

__all__ = (
    'RetryEventSerializer',
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
