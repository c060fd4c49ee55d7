"""MuJoCo renderers whose OpenGL state survives `fork`.

Mesa's EGL runs worker threads behind an initialized display. A child forked from a process that
initialized one inherits the display but not the threads, and its first render hangs: that is what
`gymnasium.make_vec("fmmm/...", vectorization_mode="async")` (fork, on Linux) did after an env had
rendered in the parent. So before each fork, when no MuJoCo EGL context is alive in the process
(fmmm's or another library's), the EGL display is terminated; MuJoCo creates it again for the next
renderer, in parent and child alike. A child forked while a context was alive cannot render, and
says so instead of hanging.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import weakref

import mujoco

_inherited_egl_display = False
_renderers: weakref.WeakSet = weakref.WeakSet()


def _close_renderers() -> None:
    # Left to `__del__`, renderers alive at interpreter exit are freed after MuJoCo's EGL module has
    # terminated its display, which prints "Exception ignored ... EGLError" on MuJoCo 3.x. This is
    # registered after that module's own exit hook (at the first renderer), so it runs before it.
    for renderer in list(_renderers):
        renderer.close()


def _egl_context_alive(egl) -> bool:
    # A heap scan (about 0.1 s per 200k objects), only at a fork of a process that has rendered.
    # type(), not isinstance: that would run the `__class__` hooks of lazy module proxies.
    return any(
        issubclass(type(obj), egl.GLContext) and getattr(obj, "_context", True)
        for obj in gc.get_objects()
    )


def _release_egl_before_fork() -> None:
    egl = sys.modules.get("mujoco.egl")
    if egl is not None and egl.EGL_DISPLAY is not None and not _egl_context_alive(egl):
        egl.EGL.eglTerminate(egl.EGL_DISPLAY)
        egl.EGL_DISPLAY = None


def _note_egl_display_in_child() -> None:
    global _inherited_egl_display
    egl = sys.modules.get("mujoco.egl")
    _inherited_egl_display = egl is not None and egl.EGL_DISPLAY is not None


os.register_at_fork(before=_release_egl_before_fork, after_in_child=_note_egl_display_in_child)


def make_renderer(model: mujoco.MjModel, height: int, width: int) -> mujoco.Renderer:
    """A `mujoco.Renderer`, refused with the fix in a child forked while its parent rendered."""
    if _inherited_egl_display:
        raise RuntimeError(
            "this process was forked while its parent had a live EGL renderer, which a forked "
            "child cannot use; close the parent's envs before forking, or start workers with "
            "spawn (gymnasium.make_vec(..., vector_kwargs={'context': 'spawn'}))"
        )
    try:
        renderer = mujoco.Renderer(model, height, width)
    except Exception as exc:  # mujoco raises FatalError or RuntimeError by backend
        raise RuntimeError(
            f"cannot create an OpenGL context (MUJOCO_GL={os.environ.get('MUJOCO_GL')}): {exc}; "
            "set MUJOCO_GL=egl or osmesa before mujoco is first imported, or use render=False"
        ) from None
    if not _renderers:
        atexit.unregister(_close_renderers)
        atexit.register(_close_renderers)
    _renderers.add(renderer)
    return renderer
