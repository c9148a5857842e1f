"""REST API for knowledge bases: list them, upload documents, follow their status, delete them.

Same services and the same access rules as the pages; the tenant middleware has already put the
request in its tenant's database context. The paths are exact (`no_append_slash`): a path without
its slash gets a 404 in JSON, not a redirect that drops the body (or, with DEBUG on, a 500 page).
"""

from __future__ import annotations

from typing import Any

from django.http import Http404
from django.views.decorators.common import no_append_slash
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.decorators import api_view, parser_classes
from rest_framework.exceptions import PermissionDenied
from rest_framework.parsers import MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from audit.services import actor_from_request
from knowledge.models import Document, KnowledgeBase
from knowledge.selectors import (
    MANAGERS,
    document_get_for_manager,
    documents_of_knowledge_base,
    knowledge_base_get_for_manager,
    knowledge_bases_visible_to,
)
from knowledge.services.documents import document_delete, documents_upload
from tenants.models import Membership


class KnowledgeBaseSerializer(serializers.ModelSerializer[KnowledgeBase]):
    class Meta:
        model = KnowledgeBase
        fields = ["id", "name", "description", "access_roles", "chunk_max_tokens", "chunk_overlap_tokens", "created_at"]


class DocumentSerializer(serializers.ModelSerializer[Document]):
    class Meta:
        model = Document
        fields = ["id", "knowledge_base", "title", "name", "format", "size_bytes", "content_hash", "version", "status",
                  "progress", "error", "warnings", "chunk_count", "chunks_embedded", "timings", "created_at",
                  "started_at", "finished_at"]


class UploadOutcomeSerializer(serializers.Serializer[Any]):
    """What happened to one uploaded file (documents the upload's answer; nothing is read with it)."""

    outcome = serializers.ChoiceField(choices=["queued", "new_version", "unchanged", "rejected"])
    message = serializers.CharField()
    document = DocumentSerializer()


class ErrorSerializer(serializers.Serializer[Any]):
    """DRF's error body, and ours (deepseek_web/api_errors.py) for every error under /api/."""

    detail = serializers.CharField()


# The answers every endpoint may give besides its own: not signed in, or not allowed (403), and a
# request DRF cannot honour: an Accept it cannot render (406), a body type it cannot parse (415).
_REFUSALS = {
    403: OpenApiResponse(ErrorSerializer, description="Not signed in, not a member, or not allowed."),
    406: OpenApiResponse(ErrorSerializer, description="The Accept header asks for something other than JSON."),
}
_NOT_FOUND = {404: OpenApiResponse(ErrorSerializer, description="No such object in your organisation.")}
_UPLOAD = inline_serializer("DocumentUpload", fields={
    "files": serializers.ListField(child=serializers.FileField(), min_length=1, help_text="One or more files."),
})

# Either every file's outcome (all rejected) or one error for the whole request.
_UPLOAD_REFUSED = {"oneOf": [{"type": "array", "items": {"$ref": "#/components/schemas/UploadOutcome"}},
                             {"$ref": "#/components/schemas/Error"}]}


def _request_membership(request: Request) -> Membership:
    membership: Membership | None = getattr(request._request, "membership", None)
    if membership is None:
        raise PermissionDenied("You are not a member of any organisation.")
    return membership


def _request_manager_membership(request: Request) -> Membership:
    membership = _request_membership(request)
    if membership.role not in MANAGERS:
        raise PermissionDenied("Only knowledge admins and owners manage knowledge bases.")
    return membership


@no_append_slash
@extend_schema(operation_id="knowledge_base_list", responses={200: KnowledgeBaseSerializer(many=True), **_REFUSALS})
@api_view(["GET"])
def knowledge_base_list(request: Request) -> Response:
    queryset = knowledge_bases_visible_to(_request_membership(request))
    return Response(KnowledgeBaseSerializer(queryset, many=True).data)


@no_append_slash
@extend_schema(methods=["GET"], operation_id="document_list",
               responses={200: DocumentSerializer(many=True), **_REFUSALS, **_NOT_FOUND})
@extend_schema(methods=["POST"], operation_id="document_upload", request={"multipart/form-data": _UPLOAD},
               responses={201: UploadOutcomeSerializer(many=True),
                          400: OpenApiResponse(_UPLOAD_REFUSED, description=(
                              "No file was accepted (each one's reason), no file was sent, or the body "
                              "could not be parsed.")),
                          415: OpenApiResponse(ErrorSerializer, description="The body is not multipart/form-data."),
                          **_REFUSALS, **_NOT_FOUND})
@api_view(["GET", "POST"])
@parser_classes([MultiPartParser])
def document_list(request: Request, knowledge_base_id: int) -> Response:
    knowledge_base = knowledge_base_get_for_manager(_request_manager_membership(request), knowledge_base_id)
    if request.method == "GET":
        return Response(DocumentSerializer(documents_of_knowledge_base(knowledge_base), many=True).data)
    files = request.FILES.getlist("files")
    if not files:
        return Response({"detail": "Send one or more files in the multipart field `files`."},
                        status=status.HTTP_400_BAD_REQUEST)
    outcomes = documents_upload(knowledge_base=knowledge_base, files=files, uploaded_by=request.user,  # type: ignore[arg-type]
                                actor=actor_from_request(request._request))
    body: list[dict[str, Any]] = [
        {"outcome": o.result, "message": o.message, "document": DocumentSerializer(o.document).data} for o in outcomes
    ]
    accepted = any(o.result != "rejected" for o in outcomes)
    return Response(body, status=status.HTTP_201_CREATED if accepted else status.HTTP_400_BAD_REQUEST)


@no_append_slash
@extend_schema(methods=["GET"], operation_id="document_detail",
               responses={200: DocumentSerializer, **_REFUSALS, **_NOT_FOUND})
@extend_schema(methods=["DELETE"], operation_id="document_delete",
               responses={204: None, **_REFUSALS, **_NOT_FOUND})
@api_view(["GET", "DELETE"])
def document_detail(request: Request, document_id: int) -> Response:
    try:
        document = document_get_for_manager(_request_manager_membership(request), document_id)
    except Http404:
        return Response({"detail": "No such document."}, status=status.HTTP_404_NOT_FOUND)
    if request.method == "DELETE":
        document_delete(document=document, actor=actor_from_request(request._request))
        return Response(status=status.HTTP_204_NO_CONTENT)
    return Response(DocumentSerializer(document).data)
