"""Restoring a saved image's people settings (boxes, identity mixing, strengths, face prompts) onto
the people present; the form's fields go through :class:`~.settings_form.SettingsForm` itself."""
from __future__ import annotations

from typing import Any, Mapping

from .people import PeopleModel, Role


def restore_people(model: PeopleModel, params: Mapping[str, Any]) -> list[str]:
    """Apply parsed PNG parameters to the people in ``model``; returns notes on what could not be
    restored (the image had other people)."""
    notes = []
    n = model.rowCount()
    boxes = params.get("boxes") or []
    if boxes and len(boxes) == 1 and n >= 2:
        model.set_mix(True)
        model.set_shared_box(boxes[0])
    elif boxes and len(boxes) == n:
        model.set_mix(False)
        for row, box in enumerate(boxes):
            model.setData(model.index(row), box, Role.BOX)
    elif boxes:
        notes.append(f"it had {len(params.get('people', boxes))} people; add their photos to restore the boxes")
    scales = params.get("id_scale")
    if scales is not None:
        per_person = list(scales) if isinstance(scales, (list, tuple)) else [scales] * n
        if len(per_person) == n:
            for row, scale in enumerate(per_person):
                model.setData(model.index(row), float(scale), Role.ID_SCALE)
    prompts = params.get("face_prompts") or []
    if prompts and len(prompts) == n:
        for row, face_prompt in enumerate(prompts):
            if (face_prompt or None) != model.index(row).data(Role.FACE_PROMPT):
                model.setData(model.index(row), face_prompt, Role.FACE_PROMPT)
    return notes
