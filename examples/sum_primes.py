"""Parallel Python's classic example: the sum of all primes below n.

Run it on every core:

    pprun map examples/sum_primes.py:sum_primes --range 100000:100800:100

or serially, for comparison:

    python3 examples/sum_primes.py 100000 100100 100200
"""

import math
import sys


def isprime(n):
    """True when n is a prime number."""
    if n < 2:
        return False
    if n == 2:
        return True
    if n % 2 == 0:
        return False
    limit = int(math.sqrt(n))
    for divisor in range(3, limit + 1, 2):
        if n % divisor == 0:
            return False
    return True


def sum_primes(n):
    """The sum of all primes below n."""
    return sum(x for x in range(2, n) if isprime(x))


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(sum_primes(int(arg)))
