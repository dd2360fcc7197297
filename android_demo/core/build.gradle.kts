// The pure-Kotlin core: no Android dependency. On Android, org.json comes from the platform
// (compileOnly here); on the JVM (unit tests) from the same Android org.json, as Debian's
// libandroid-json-org-java ships it. CI compiles and tests it with kotlinc (android_demo/tools/kotlin_build.py).
plugins {
    id("org.jetbrains.kotlin.jvm")
}

kotlin { jvmToolchain(17) }

dependencies {
    compileOnly("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("com.vaadin.external.google:android-json:0.0.20131108.vaadin1")
    testImplementation("junit:junit:4.13.2")
}

tasks.test {
    systemProperty("vectors", rootProject.projectDir.resolve("../tests/fixtures/apps").absolutePath)
}
