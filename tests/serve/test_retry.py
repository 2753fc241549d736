"""An idempotent call (encoding an image) is made again when the replica running it dies."""

import asyncio

import pytest
from fastapi import HTTPException
from ray.exceptions import RayActorError

from rayhash.serve.fanout import answer_retried


def calls(*outcomes):
    """A ``call()`` whose n-th awaitable raises or returns ``outcomes[n]``; counts the calls."""
    made = []

    def call():
        outcome = outcomes[len(made)]
        made.append(outcome)

        async def run():
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return run()

    return call, made


def test_a_call_that_lost_its_replica_is_made_again():
    call, made = calls(RayActorError(), RayActorError(), "code")
    assert asyncio.run(answer_retried(call, "the encoder", 5.0)) == "code" and len(made) == 3


def test_other_failures_and_the_deadline_are_not_retried():
    call, made = calls(ValueError("bad"), "code")
    with pytest.raises(ValueError):
        asyncio.run(answer_retried(call, "the encoder", 5.0))
    assert len(made) == 1

    async def slow():
        await asyncio.sleep(10)

    with pytest.raises(HTTPException) as e:
        asyncio.run(answer_retried(slow, "the encoder", 0.2))
    assert e.value.status_code == 503 and "did not answer within 0.2 s" in e.value.detail
