// The Compose chat screen (NOT compiled here: needs the Android SDK and Compose; README lists it
// as unverified). Kept thin: state and logic are in ChatViewModel / ChatEngine / core.
package org.mobilellm.demo.ui

import android.os.Bundle
import androidx.activity.ComponentActivity
import androidx.activity.compose.setContent
import androidx.activity.viewModels
import androidx.compose.foundation.layout.Column
import androidx.compose.foundation.layout.Row
import androidx.compose.foundation.layout.fillMaxSize
import androidx.compose.foundation.layout.fillMaxWidth
import androidx.compose.foundation.layout.padding
import androidx.compose.foundation.lazy.LazyColumn
import androidx.compose.foundation.lazy.items
import androidx.compose.material3.Button
import androidx.compose.material3.FilterChip
import androidx.compose.material3.MaterialTheme
import androidx.compose.material3.OutlinedTextField
import androidx.compose.material3.Text
import androidx.compose.runtime.Composable
import androidx.compose.runtime.getValue
import androidx.compose.runtime.mutableStateOf
import androidx.compose.runtime.remember
import androidx.compose.runtime.setValue
import androidx.compose.ui.Modifier
import androidx.compose.ui.unit.dp

class MainActivity : ComponentActivity() {
    private val vm: ChatViewModel by viewModels()

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        // adb-pushable: /data/local/tmp/mobilellm/<bundle>/ or /sdcard/Android/data/org.mobilellm.demo/files/<bundle>/
        vm.scan(listOfNotNull(getExternalFilesDir(null), filesDir))
        setContent { MaterialTheme { ChatScreen(vm) } }
    }
}

@Composable
fun ChatScreen(vm: ChatViewModel) {
    var input by remember { mutableStateOf("") }
    Column(Modifier.fillMaxSize().padding(8.dp)) {
        if (vm.status.value.isEmpty() && vm.messages.isEmpty()) {
            Text("Bundles in /data/local/tmp/mobilellm/ and app storage:")
            vm.bundles.forEach { b ->
                Button(onClick = { vm.open(b) }, enabled = b.bundle != null) { Text(b.dir.name + (b.error?.let { " — $it" } ?: "")) }
            }
        }
        Text(vm.status.value, style = MaterialTheme.typography.labelSmall)
        Row {
            listOf("math", "code").forEach { key ->
                FilterChip(selected = vm.systemPreset.value == key, onClick = {
                    vm.systemPreset.value = if (vm.systemPreset.value == key) null else key
                }, label = { Text(key) })
            }
            FilterChip(selected = vm.thinking.value, onClick = { vm.thinking.value = !vm.thinking.value }, label = { Text("think") })
        }
        LazyColumn(Modifier.weight(1f).fillMaxWidth()) {
            items(vm.messages.filter { it.role != "system" }) { m -> Text("${m.role}: ${m.content}", Modifier.padding(4.dp)) }
            if (vm.busy.value) item { Text("assistant: ${vm.streaming.value}", Modifier.padding(4.dp)) }
        }
        Row {
            OutlinedTextField(input, { input = it }, Modifier.weight(1f))
            if (vm.busy.value) {
                Button(onClick = { vm.stop() }) { Text("Stop") }
            } else {
                Button(onClick = { vm.send(input); input = "" }, enabled = input.isNotBlank()) { Text("Send") }
            }
        }
    }
}
