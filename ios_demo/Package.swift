// swift-tools-version:5.9
// ExecuTorch's Swift package (branch swiftpm-1.5.1 of pytorch/executorch: ExecuTorchLLM's TextRunner,
// XNNPACK backend, LLM custom ops; the version that writes the bundles and MobileLLMCore's
// Bundle.executorchVersion, checked by tests/e2e/test_apps.py) and swift-transformers (Tokenizers, for
// the Core ML path).
import PackageDescription

let package = Package(
    name: "MobileLLMDemo",
    platforms: [.iOS(.v17), .macOS(.v14)],
    products: [
        .library(name: "MobileLLMCore", targets: ["MobileLLMCore"]),
        .executable(name: "MobileLLMDemo", targets: ["MobileLLMDemo"]),
    ],
    dependencies: [
        .package(url: "https://github.com/pytorch/executorch", branch: "swiftpm-1.5.1"),
        .package(url: "https://github.com/huggingface/swift-transformers", from: "0.1.17"),
    ],
    targets: [
        // The logic: a line-for-line mirror of android_demo/core, Foundation only.
        .target(name: "MobileLLMCore", path: "Sources/MobileLLMCore"),
        .executableTarget(
            name: "MobileLLMDemo",
            dependencies: [
                "MobileLLMCore",
                .product(name: "executorch_llm", package: "executorch"),
                .product(name: "backend_xnnpack", package: "executorch"),
                .product(name: "kernels_llm", package: "executorch"),
                .product(name: "kernels_optimized", package: "executorch"),
                .product(name: "Tokenizers", package: "swift-transformers"),
            ],
            path: "Sources/MobileLLMDemo",
            linkerSettings: [.unsafeFlags(["-all_load"])]
        ),
        .testTarget(name: "MobileLLMCoreTests", dependencies: ["MobileLLMCore"], path: "Tests/MobileLLMCoreTests"),
    ]
)
