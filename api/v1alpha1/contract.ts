// What the operator and the trainer pod agree on beyond the API object itself.

/**
 * Exit codes of `kubetune train`: 0 done; 1 failed (its last log line, and the termination
 * message, read `Reason: message`); 75 (EX_TEMPFAIL) stopped by SIGTERM after saving a
 * checkpoint, which the operator does not count as a failure.
 */
export const EXIT_CODE = { failed: 1, stopped: 75 } as const;
