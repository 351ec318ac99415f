"""The unrolled program (A -> B) and the two ways to run it: the reference interpreter
over the program, and the loop compiler that rolls it back into one compiled time loop."""
