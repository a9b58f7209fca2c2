"""The daily schedule: a pure plan of phases and trading days (`plan`), the loop that runs it
(`runner`) and the steps it runs (`steps`)."""
