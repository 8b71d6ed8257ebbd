# Stage: edge-level discovery (EAP, EAP-IG, Edge Pruning, HAP). Issue 6; nothing here yet.
