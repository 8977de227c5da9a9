"""Expression and pose presets in the release's face-prompt wording."""
from __future__ import annotations

EXPRESSIONS = ("neutral", "happy", "sad", "surprised", "angry")
POSES = ("front view", "side view", "facing up", "facing down")
UNCHANGED = "unchanged"


def build_face_prompt(expression: str, pose: str, source_prompt: str) -> str | None:
    """The target face prompt in the release's wording ("in a happy expression, facing up, in front
    view"); ``unchanged`` parts keep what the source prompt says. None when nothing changes."""
    if expression == UNCHANGED and pose == UNCHANGED:
        return None
    head, _, src_pose = source_prompt.partition(" expression, ")
    src_expression = head.removeprefix("in a ").strip() or "neutral"
    expr = src_expression if expression == UNCHANGED else expression
    if pose == UNCHANGED:
        pose_text = src_pose or "in front view"
    elif pose in ("facing up", "facing down"):
        pose_text = f"{pose}, in front view"
    else:
        pose_text = f"in {pose}"
    return f"in a {expr} expression, {pose_text}"
