# Stage: planted ground-truth circuits and how each method recovers them. Issue 8; nothing here
# yet.
