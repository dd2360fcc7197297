// Versions: Android Gradle Plugin 8.7.3, Kotlin 2.1.0 (Compose compiler plugin of the same version).
// Not resolvable on the machine that wrote this (no Maven access): see README "Not verified here".
plugins {
    id("com.android.application") version "8.7.3" apply false
    id("org.jetbrains.kotlin.android") version "2.1.0" apply false
    id("org.jetbrains.kotlin.jvm") version "2.1.0" apply false
    id("org.jetbrains.kotlin.plugin.compose") version "2.1.0" apply false
}
