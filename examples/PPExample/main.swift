// A short tour of the ParallelPython client library (local mode):
//
//     swift run PPExample
//
// It sums primes on every core, runs a function defined from a string, and shows
// how a failing job reports its Python traceback.

import ParallelPython

let server = JobServer()
print("local workers:", await server.workers())

// 1. A function from a file, over many inputs, results in input order.
let sumPrimes = try PythonFunction(file: "examples/sum_primes.py", name: "sum_primes")
let inputs = Array(stride(from: 100_000, to: 100_800, by: 100))
let sums = try await server.map(sumPrimes, inputs, as: Int.self)
for (n, s) in zip(inputs, sums) { print("sum of primes below \(n) is \(s)") }

// 2. A function from source text, submitted one job at a time, with a callback.
let greet = PythonFunction(name: "greet", source: "def greet(name, times):\n    print('hello from a worker')\n    return ' '.join([name] * times)\n")
let handle = try server.submit(greet, "ppnode", 3, as: String.self) { result in
    print("callback got:", result)
}
print("awaited:", try await handle.value, "| printed:", await handle.outcome.stdout, terminator: "")

// 3. A failing job ends with the Python exception and its traceback.
let divide = PythonFunction(name: "divide", source: "def divide(a, b):\n    return a / b\n")
do {
    _ = try await server.submit(divide, 1, 0, as: Double.self).value
} catch let error as JobError {
    print("failed as expected: \(error)")
    print(error.traceback)
}

await server.waitAll()
print(await server.statisticsTable())
await server.shutdown()
