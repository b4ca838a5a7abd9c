"""Each finding of the training doctor and the curve watch posted to Slack as the run makes it.

Both record every finding in the run folder's ``findings.jsonl`` (``callbacks.findings``), the one place a run
says what is wrong. ``SlackFindings`` reads the lines added to it since the run started and posts each as one
message to a Slack incoming webhook (the URL in ``SLACK_WEBHOOK_URL``), so a person away from the console hears
of a run diverging, stalled or stopped while there is still time to act.

Why not Composer's ``SlackLogger`` (composer/loggers/slack_logger.py, 0.32.1): it posts through slack_sdk's
``WebClient.chat_postMessage``, which needs a bot token (``SLACK_LOGGING_API_KEY``) and a channel id; it sends
metrics whose keys match patterns, buffered per batch interval, not messages; and it logs and drops any failure.
An incoming webhook is one URL that already names its channel, a finding is one message, and posting it takes the
standard library's ``urllib``: no slack_sdk to install, no bot token or scopes to set up.
"""

from __future__ import annotations

import http.client
import json
import urllib.request
from pathlib import Path

from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

from callbacks.findings import FINDINGS_FILENAME, Finding
from callbacks.ranks import say

SLACK_WEBHOOK_VARIABLE = "SLACK_WEBHOOK_URL"
# Findings are rare; a Slack outage delays the step that posts one by at most this, never stops the run.
POST_TIMEOUT_S = 10.0


class SlackFindings(LoggerDestination):
    """Posts each finding appended to ``folder/findings.jsonl`` after it was built (global rank 0 only).

    Findings already in the file are not posted: an autoresumed run's earlier ones were posted by the launch
    that made them, and this run's recipe checks were printed at its start, with the person there to read them.
    The file is looked at after each batch and evaluation and at the end, so a finding made during a batch is
    posted at the next batch's end, and the one that stops a run before the run ends.
    """

    def __init__(self, folder: str | Path, webhook_url: str) -> None:
        self.path = Path(folder) / FINDINGS_FILENAME
        self.webhook_url = webhook_url
        self.read_up_to = self.path.stat().st_size if self.path.exists() else 0
        self.run_name = ""

    def init(self, state: State, logger: Logger) -> None:
        self.run_name = state.run_name

    def batch_end(self, state: State, logger: Logger) -> None:
        self.post_new_findings()

    def eval_end(self, state: State, logger: Logger) -> None:
        self.post_new_findings()

    def fit_end(self, state: State, logger: Logger) -> None:
        self.post_new_findings()

    def close(self, state: State, logger: Logger) -> None:
        self.post_new_findings()

    def post_new_findings(self) -> None:
        """Post every complete line added to ``findings.jsonl`` since the last look (one ``stat`` when none)."""
        if dist.get_global_rank() != 0 or not self.path.exists():
            return
        size = self.path.stat().st_size
        if size <= self.read_up_to:
            return
        with self.path.open("rb") as file:
            file.seek(self.read_up_to)
            added = file.read(size - self.read_up_to)
        complete = added[: added.rfind(b"\n") + 1]  # a line still being written waits for the next look
        self.read_up_to += len(complete)
        for line in complete.decode("utf-8").splitlines():
            if line:
                self.post(Finding(**json.loads(line)))

    def post(self, finding: Finding) -> None:
        """One message: the run's name and the finding's console line. A failure is said, not raised: the
        finding stays in ``findings.jsonl``, and a run is worth more than its notification."""
        payload = json.dumps({"text": f"*{self.run_name}* {finding.line()}"}).encode("utf-8")
        request = urllib.request.Request(
            self.webhook_url, data=payload, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=POST_TIMEOUT_S):
                pass
        except (OSError, http.client.HTTPException) as error:
            say(f"note: finding [{finding.code}] not posted to Slack ({error}); it is in {self.path}")
