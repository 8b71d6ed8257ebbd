# Stage: the papers' tables and figures, paper vs ours, and the workflow report. Issue 7; nothing
# here yet.
