"""Allure steps and attachments for the phases of a case (no-ops where allure-pytest is absent).

Reporting must never change a verdict: every helper here swallows its own errors.
"""
from __future__ import annotations

import contextlib


def phase(title: str):
    """An Allure step for one phase of a case (inputs, dispatch, combine, compare)."""
    try:
        import allure

        return allure.step(title)
    except Exception:  # noqa: BLE001
        return contextlib.nullcontext()


def attach(name: str, text: str) -> None:
    try:
        import allure

        allure.attach(text, name=name, attachment_type=allure.attachment_type.TEXT)
    except Exception:  # noqa: BLE001
        pass


def attach_png(name: str, png: bytes) -> None:
    try:
        import allure

        allure.attach(png, name=name, attachment_type=allure.attachment_type.PNG)
    except Exception:  # noqa: BLE001
        pass


def label_drift(outputs) -> None:
    """Label the running test ``drift`` (category "Implementation-defined drift"). Set at the verdict:
    the drift warning itself reaches pytest only after Allure has written the result."""
    try:
        import allure

        allure.dynamic.label("drift", ", ".join(outputs))
        allure.dynamic.tag("drift")
    except Exception:  # noqa: BLE001
        pass
