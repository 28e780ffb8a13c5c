"""The fixes of fixStorageRepository: one module per kind, each with its STAGES
and an `async run(ctx)` whose docstring lists its durable steps."""

from repofs.fixes import clean, mend, merge, optimize
from repofs.model import FixKind

KINDS = {
    FixKind.CLEAN: clean,
    FixKind.OPTIMIZE: optimize,
    FixKind.MEND: mend,
    FixKind.MERGE: merge,
}
